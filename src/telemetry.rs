//! Logging. Every log line carries an `event` field naming what happened
//! (`submission_accepted`, `delivered`, `parked`, ...) and ids — never form
//! data. `RUST_LOG` filters, `AMTSBOTE_LOG_FORMAT=json` switches to JSON.
//! Logs go to stderr, so that the output of commands such as
//! `amtsbote parked list --json` can be piped.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let result = if std::env::var("AMTSBOTE_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
