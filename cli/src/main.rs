//! camp: the command-line client of the camp coordinator.

mod args;
mod client;
mod commands;
mod exit;
mod global_opts;
mod input_files;
mod output;
mod pages;
mod spec_flags;
mod values;

use std::process::ExitCode;

use clap::Parser;

/// Dies quietly, of SIGPIPE like other Unix tools, when the reader of stdout
/// goes away (`camp watch 4 --json | head`). SIGPIPE itself stays ignored (as
/// Rust starts a program): a coordinator that hangs up on a socket write (say
/// a plaintext call to a TLS port) is an error to report, not a silent death.
/// So a print to a closed stdout panics, and this hook turns that panic into
/// the death by SIGPIPE.
fn die_quietly_when_stdout_closes() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message =
            payload.downcast_ref::<String>().map(String::as_str).or_else(|| payload.downcast_ref::<&str>().copied()).unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            // SAFETY: restores the default disposition and raises the signal; the process ends here.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
                libc::raise(libc::SIGPIPE);
            }
        }
        default_hook(info);
    }));
}

fn main() -> ExitCode {
    die_quietly_when_stdout_closes();
    let cli = args::Cli::parse();
    let addr = cli.global.addr.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let message = exit::one_line_message(&err);
            // A plaintext call that met a TLS listener: say to use https://.
            let hint = client::hint(&addr, &message);
            eprintln!("error: {message}{hint}");
            ExitCode::from(exit::code_for_error(&err))
        }
    }
}
