use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("S3MEM_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = s3mem::cli::Cli::parse();
    // A command piped into `head` ends quietly; the daemon keeps running when whatever read
    // its output has gone (its log lines fail instead).
    if !matches!(cli.command, s3mem::cli::Command::Serve(_)) {
        s3mem::sys::end_quietly_on_closed_pipe();
    }
    match s3mem::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
