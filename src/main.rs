use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = sluice::cli::Cli::parse();
    sluice::init_tracing();
    match sluice::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
