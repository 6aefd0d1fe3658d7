//! `openshell-copier`: see `--help` ([`openshell_copier::args::HELP`]).

use std::io::Write;
use std::process::ExitCode;

use openshell_copier::args::{self, Command};
use openshell_copier::error::EXIT_OK;
use openshell_copier::expected::PIN_ENV;
use openshell_copier::log;

fn main() -> ExitCode {
    let parsed = args::parse(std::env::args_os().skip(1), std::env::var_os(PIN_ENV));
    let format = parsed.log_format;
    let outcome = parsed.command.and_then(|command| match command {
        Command::Help => Ok(args::HELP.to_owned()),
        Command::Version => Ok(format!("{} {}", log::PROGRAM, env!("CARGO_PKG_VERSION"))),
        Command::Install(options) => {
            openshell_copier::run(&options).map(|report| log::success(format, &report))
        }
    });
    // If stdout or stderr is gone there is nobody to tell; the exit status still says it all.
    match outcome {
        Ok(text) => {
            let _ = writeln!(std::io::stdout().lock(), "{}", text.trim_end());
            ExitCode::from(EXIT_OK)
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr().lock(), "{}", log::failure(format, &err));
            ExitCode::from(err.exit_code())
        }
    }
}
