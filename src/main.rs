use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    sluice::cli::quiet_broken_pipe();
    let cli = sluice::cli::Cli::parse();
    sluice::init_tracing();
    match sluice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader went away (`sluice results … | head`): that is how a pipe ends.
        Err(e) if sluice::cli::is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
