//! The `weft-proxy` binary.

use clap::Parser;
use weft_proxy::cli::{Cli, Command};

/// jemalloc keeps its bookkeeping out of the blocks it hands out, so the pages of a buffer that
/// was reserved but never filled stay unbacked. hyper reserves 8 KiB read and write buffers
/// per HTTP/1 connection; with the system allocator they were resident even on idle
/// connections (a fresh proxy holding 1,000 keep-alive connections: 22.8 MB with glibc, 19.8
/// MB with jemalloc).
///
/// jemalloc's options are compiled in (`JEMALLOC_SYS_WITH_MALLOC_CONF` in
/// `.cargo/config.toml`; `_RJEM_MALLOC_CONF` in the environment overrides them at start).
/// `dirty_decay_ms:1000`: pages that freed blocks leave behind go back to the kernel after
/// one second rather than jemalloc's default ten. Under a load of 1,000 connections the
/// requests' freed buffers otherwise pile up as resident pages (peak RSS 35-40 MB with the
/// default, 32-34 MB with this; throughput and CPU per request the same within noise).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => weft_proxy::app::run(&args),
        Command::Init(args) => weft_proxy::init::run(&args).map_err(anyhow::Error::from),
        Command::Wait(args) => weft_proxy::wait::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
