//! camp: the command-line client of the camp coordinator.

mod args;
mod client;
mod commands;
mod exit;
mod output;
mod plot;
mod wire;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Die quietly like other Unix tools when the reader goes away (`camp watch 4 --json | head`).
    // SAFETY: sets a signal disposition before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", exit::one_line_message(&err));
            ExitCode::from(exit::code_for_error(&err))
        }
    }
}
