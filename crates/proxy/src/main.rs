//! The `weft-proxy` binary.

use clap::Parser;
use weft_proxy::cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => weft_proxy::app::run(&args),
        Command::Init(args) => weft_proxy::init::run(&args).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
