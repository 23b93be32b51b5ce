use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// amtsbote: from online application services to municipal back offices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the intake API and the delivery workers.
    Serve {
        #[arg(long, short, env = "AMTSBOTE_CONFIG", default_value = "amtsbote.yaml")]
        config: PathBuf,
    },
    /// Load the config and compile every mapping; report all problems.
    Check {
        #[arg(long, short, env = "AMTSBOTE_CONFIG", default_value = "amtsbote.yaml")]
        config: PathBuf,
    },
    /// Run the demo: sample back offices, amtsbote, sample submissions.
    Demo {
        /// The demo config (its targets point at the sample back offices).
        #[arg(long, default_value = "examples/demo/amtsbote.yaml")]
        config: PathBuf,
        /// Folder of sample submissions to send.
        #[arg(long, default_value = "examples/demo/submissions")]
        submissions: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    amtsbote::telemetry::init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = amtsbote::config::Config::load(&config)?;
            let app = amtsbote::app::Application::build(&config).await?;
            tracing::info!(event = "listening", address = %app.local_addr(), broker = %config.broker.display_url(), "intake listening");
            app.run_until(amtsbote::app::shutdown_signal()).await.context("serving")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let path = config.display().to_string();
            let config = amtsbote::config::Config::load(&config)?;
            match amtsbote::pipeline::Pipeline::build(&config) {
                Ok(pipeline) => {
                    println!("{path}: ok ({} targets, {} routes)", pipeline.targets.len(), config.routes.len());
                    Ok(ExitCode::SUCCESS)
                }
                Err(problems) => {
                    for problem in problems {
                        eprintln!("{path}: {problem}");
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Demo { config, submissions } => amtsbote::demo::run(&config, &submissions).await.map(|()| ExitCode::SUCCESS),
    }
}
