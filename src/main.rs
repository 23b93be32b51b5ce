use std::path::PathBuf;
use std::process::ExitCode;

use amtsbote::domain::TargetName;
use amtsbote::parking::{Action, ParkingLot, Selection};
use anyhow::Context;
use clap::{Parser, Subcommand};

// mimalloc: the mapping evaluation allocates and frees many small values
// (jaq's), and with the system allocator a third of a sandbox process's
// time went to malloc and free (`scripts/bench`, perf).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc asks for transparent huge pages for its memory (where the
/// kernel's THP setting is `madvise` or `always`), and a 2 MiB page is
/// resident as a whole as soon as one byte of it is touched. Without them
/// the peak resident memory of the server and its sandboxes under load
/// fell from 118 to 93 MiB at the same CPU (`scripts/bench`). The setting
/// holds for the sandbox processes too, which inherit it.
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer argument and changes
    // only this process's memory policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

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
        /// The config file (YAML); examples/demo/amtsbote.yaml is a complete example.
        #[arg(long, short, env = "AMTSBOTE_CONFIG", default_value = "amtsbote.yaml")]
        config: PathBuf,
    },
    /// Load the config and compile every mapping; report all problems.
    Check {
        /// The config file (YAML); examples/demo/amtsbote.yaml is a complete example.
        #[arg(long, short, env = "AMTSBOTE_CONFIG", default_value = "amtsbote.yaml")]
        config: PathBuf,
        /// Also probe the broker and every target: connect and log in,
        /// deliver nothing.
        #[arg(long)]
        probe: bool,
    },
    /// Look at and act on parked deliveries (talks to the broker and the
    /// store directly; the running server need not be reachable).
    Parked {
        /// The config file (YAML) of the amtsbote whose parked deliveries these are.
        #[arg(long, short, global = true, env = "AMTSBOTE_CONFIG", default_value = "amtsbote.yaml")]
        config: PathBuf,
        #[command(subcommand)]
        command: ParkedCommand,
    },
    /// Work with mapping files.
    Mappings {
        #[command(subcommand)]
        command: MappingsCommand,
    },
    /// Evaluate mappings for a running amtsbote (started by it; not for
    /// people).
    #[command(hide = true)]
    MappingSandbox {
        #[arg(long)]
        memory_limit_mib: u64,
        #[arg(long)]
        output_limit_mib: u64,
    },
    /// Work with the config file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make credentials: API keys for senders, tokens for operators, key
    /// pairs for FIT-Connect.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Run the demo: sample back offices, amtsbote, sample submissions.
    Demo {
        /// The demo config (its targets point at the sample back offices).
        #[arg(short, long, default_value = "examples/demo/amtsbote.yaml")]
        config: PathBuf,
        /// Folder of sample submissions to send.
        #[arg(long, default_value = "examples/demo/submissions")]
        submissions: PathBuf,
        /// Keep serving after the report (intake, dashboard, metrics)
        /// until Ctrl-C.
        #[arg(long)]
        stay: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the JSON Schema of the config file (the one in the repository
    /// is `amtsbote.schema.json`); point an editor at it with a
    /// `# yaml-language-server: $schema=...` line for completion and checks
    /// while typing.
    Schema,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new random key (256 bits, hex) and the SHA-256 to configure
    /// (`api_keys_sha256` of a sender, `token_sha256` of an operator). Hand
    /// the key to its holder; only the hash goes into the config.
    New,
    /// Print the SHA-256 fingerprint of each certificate in a PEM file, for
    /// a sender's `client_certificates_sha256`.
    Fingerprint {
        /// The client certificate (PEM); never the private key.
        certificate: PathBuf,
    },
    /// Make a FIT-Connect destination's key pairs (RSA-4096, one to
    /// decrypt, one to sign) as JWKs: the private halves for
    /// `decryption_keys` and `signing_key`, the public halves to upload in
    /// FITKO's self-service portal.
    FitConnect {
        /// The folder to write them to (created if missing; existing key
        /// files are never overwritten).
        #[arg(default_value = "fit-connect-keys")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum MappingsCommand {
    /// Run every mapping's fixtures (`fixtures/<name>.input.json` against
    /// `fixtures/<name>.expected.*`); show a diff for each mismatch and
    /// exit non-zero if any fixture fails.
    Test {
        /// A mappings folder, a mapping's folder or one mapping file.
        #[arg(default_value = "mappings")]
        path: PathBuf,
        /// Write the output of fixtures that have no expected file yet as
        /// their expected file (review it before committing).
        #[arg(long)]
        bless: bool,
        /// Also overwrite the expected file of every fixture whose output
        /// differs (for values nobody writes by hand, such as `uuid(...)`
        /// ids); prints what changed. Review it with `git diff`.
        #[arg(long)]
        update: bool,
    },
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// List parked deliveries.
    List {
        #[command(flatten)]
        select: Select,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one parked delivery.
    Show { target: String, submission: uuid::Uuid },
    /// Send parked deliveries back to their target's queue.
    Replay {
        #[command(flatten)]
        act: Act,
    },
    /// Remove parked deliveries for good (recorded in the audit trail).
    Discard {
        #[command(flatten)]
        act: Act,
        /// Why, for the audit trail.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Who replayed or discarded what, newest first.
    Audit {
        /// How many entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

/// Which parked deliveries: every given filter must match.
#[derive(clap::Args)]
struct Select {
    /// Only the deliveries to this target (its name in the config).
    #[arg(long)]
    target: Option<String>,
    /// e.g. target-rejected, retries-exhausted, mapping-error, undecodable.
    #[arg(long)]
    reason: Option<String>,
    /// Parked at least this long ago, e.g. 30m, 2h, 3d.
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<std::time::Duration>,
    /// One submission (an id).
    #[arg(long)]
    submission: Option<uuid::Uuid>,
}

/// The selection of a replay or discard, and who does it.
#[derive(clap::Args)]
struct Act {
    #[command(flatten)]
    select: Select,
    /// Act on every parked delivery (needed when no filter is given).
    #[arg(long)]
    all: bool,
    /// Recorded in the audit trail (default: the login name).
    #[arg(long, env = "AMTSBOTE_OPERATOR")]
    operator: Option<String>,
}

impl Act {
    /// The selection (refused when empty without `--all`) and the operator.
    fn resolve(self) -> anyhow::Result<(Selection, String)> {
        let selection = self.select.selection()?;
        anyhow::ensure!(
            !selection.is_everything() || self.all,
            "name --target, --reason, --older-than or --submission, or pass --all"
        );
        let operator = self
            .operator
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .unwrap_or_else(|| "unknown".into());
        Ok((selection, operator))
    }
}

impl Select {
    fn selection(self) -> anyhow::Result<Selection> {
        let target = self.target.map(|t| TargetName::parse(&t)).transpose().map_err(|e| anyhow::anyhow!("--target: {e}"))?;
        Ok(Selection { target, reason: self.reason, older_than: self.older_than, submission: self.submission, within: None })
    }
}

fn main() -> ExitCode {
    without_transparent_huge_pages();
    let cli = Cli::parse();
    if let Command::MappingSandbox { memory_limit_mib, output_limit_mib } = cli.command {
        // No runtime, no logging: one thread answering on stdin/stdout.
        return match amtsbote::mapping::sandbox::serve(memory_limit_mib, output_limit_mib) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mapping sandbox: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let telemetry = amtsbote::telemetry::init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime starts");
    let outcome = runtime.block_on(run(cli));
    // The runtime first, then telemetry, which sends the last spans and
    // writes out the log lines still waiting: before the error below, so
    // that it stays the last line.
    drop(runtime);
    drop(telemetry);
    match outcome {
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
            let path = config;
            let config = load_config(&path)?;
            let app = amtsbote::app::Application::build(&config).await?;
            tokio::spawn(amtsbote::app::reload_on_hangup(path, app.reloader()));
            tracing::info!(event = "listening", address = %app.local_addr(), scheme = app.scheme(), broker = %config.broker.display_url(), "intake listening");
            app.run_until(amtsbote::app::shutdown_signal()).await.context("serving")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config, probe } => {
            let path = config.display().to_string();
            let config = load_config(&config)?;
            let checked = match amtsbote::check::check(&config) {
                Ok(checked) => checked,
                Err(problems) => {
                    for problem in problems {
                        eprintln!("{path}: {problem}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("{path}: ok ({} targets, {} routes)", checked.pipeline.targets.len(), checked.routes);
            for note in &checked.notes {
                println!("{path}: note: {note}");
            }
            if !probe {
                return Ok(ExitCode::SUCCESS);
            }
            let probes = checked.probe().await;
            for probe in &probes {
                match &probe.outcome {
                    Ok(()) => println!("{}: reachable", probe.part),
                    Err(e) => println!("{}: NOT reachable: {e}", probe.part),
                }
            }
            Ok(if probes.iter().all(|p| p.outcome.is_ok()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Parked { config, command } => {
            let config = load_config(&config)?;
            let store = amtsbote::store::open(&config.store, &amtsbote_connector::Context::new(&config.base_dir)).await?;
            let parking = ParkingLot::new(&config.broker, config.targets.keys().cloned().collect(), store.clone());
            parked(&parking, command).await
        }
        Command::Config { command: ConfigCommand::Schema } => {
            println!("{}", serde_json::to_string_pretty(&amtsbote::config::Config::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::New } => {
            let (key, hash) = amtsbote::access::new_key();
            println!("key:    {key}\nsha256: {hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::FitConnect { dir } } => {
            let files = amtsbote::fit_connect::make_keys(&dir)?;
            println!("private keys (secrets: configure as decryption_keys and signing_key, never share):");
            for path in &files.private {
                println!("  {}", path.display());
            }
            println!("public keys (upload in FIT-Connect's self-service portal: encryption key, signature key):");
            for path in &files.public {
                println!("  {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys { command: KeysCommand::Fingerprint { certificate } } => {
            for fingerprint in amtsbote::pem::CertificateFingerprint::of_pem_file(&certificate)? {
                println!("{fingerprint}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Mappings { command: MappingsCommand::Test { path, bless, update } } => {
            use amtsbote::mapping::{fixtures, sandbox};
            anyhow::ensure!(
                path.exists(),
                "no mappings at {} (in {}); name the mappings folder, a mapping's folder or one mapping file: \
                 amtsbote mappings test PATH",
                path.display(),
                std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into())
            );
            let write = match (update, bless) {
                (true, _) => fixtures::WriteExpected::Differing,
                (false, true) => fixtures::WriteExpected::Missing,
                (false, false) => fixtures::WriteExpected::Never,
            };
            let sandbox = sandbox::Sandbox::new(sandbox::SandboxSettings::default())?;
            let report = fixtures::run(&path, fixtures::Evaluator::Sandbox(&sandbox), write)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            print!("{}", report.log);
            Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::MappingSandbox { .. } => unreachable!("handled before the runtime starts"),
        Command::Demo { config, submissions, stay } => {
            amtsbote::demo::run(&config, &submissions, stay).await.map(|()| ExitCode::SUCCESS)
        }
    }
}

/// The config at `path`; a missing file is answered with where to find
/// one, not just the OS error.
fn load_config(path: &std::path::Path) -> anyhow::Result<amtsbote::config::Config> {
    use amtsbote::config::{Config, ConfigError};
    use amtsbote::yaml::FileError;
    match Config::load(path) {
        Err(ConfigError::File(FileError::Read { error, .. })) if error.kind() == std::io::ErrorKind::NotFound => {
            let here = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
            anyhow::bail!(
                "no config file at {} (in {here}): name one with --config FILE (or AMTSBOTE_CONFIG); \
                 examples/demo/amtsbote.yaml is a complete example to start from",
                path.display()
            )
        }
        loaded => Ok(loaded?),
    }
}

async fn parked(parking: &ParkingLot, command: ParkedCommand) -> anyhow::Result<ExitCode> {
    match command {
        ParkedCommand::List { select, json } => {
            let parked = parking.list(&select.selection()?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&parked)?);
            } else {
                print!("{}", amtsbote::parking::table(&parked));
                println!("{} parked", parked.len());
            }
        }
        ParkedCommand::Show { target, submission } => {
            let target = TargetName::parse(&target).map_err(|e| anyhow::anyhow!("target: {e}"))?;
            match parking.find(target, submission).await? {
                Some(parked) => println!("{}", serde_json::to_string_pretty(&parked)?),
                None => {
                    eprintln!("no parked delivery of submission {submission} for that target");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        ParkedCommand::Replay { act } => {
            let (selection, operator) = act.resolve()?;
            let done = parking.apply(&selection, &Action::Replay { operator }).await?;
            print!("{}", amtsbote::parking::table(&done));
            println!("{} replayed", done.len());
        }
        ParkedCommand::Discard { act, comment } => {
            let (selection, operator) = act.resolve()?;
            let done = parking.apply(&selection, &Action::Discard { operator, comment }).await?;
            print!("{}", amtsbote::parking::table(&done));
            println!("{} discarded", done.len());
        }
        ParkedCommand::Audit { limit } => {
            for entry in parking.store.audit_trail(limit, None).await? {
                let r = entry.record;
                println!(
                    "{}  {:<8} {:<16} {:<24} {}  (was {}){}",
                    entry.at,
                    r.action.as_str(),
                    r.operator,
                    r.target,
                    r.submission_id,
                    r.parked_reason,
                    r.comment.map(|c| format!("  {c}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
