//! The `ctwatch` command.

mod cli;
mod commands;
mod filter;
mod host;
mod output;
mod remote;
mod service_manager;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use tracing_subscriber::EnvFilter;

use cli::Command;

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&e),
    };
    // The NATS client's connection chatter only above warn, unless asked for by name.
    let spec = if cli.log_level.contains("async_nats") {
        cli.log_level.clone()
    } else {
        format!("{},async_nats=warn", cli.log_level)
    };
    let filter = match EnvFilter::try_new(&spec) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ctwatch: invalid --log-level {:?}: {e} (try info or debug)", cli.log_level);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !cli::no_color())
        .with_target(false)
        .init();

    let result = match &cli.command {
        Command::Watch(args) => commands::watch::run(args),
        Command::Ls(args) => commands::ls::run(args),
        Command::History(args) => commands::history::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Get(args) => commands::get::run_get(args),
        Command::Pid(args) => commands::get::run_pid(args),
        Command::Resolve(args) => commands::get::run_resolve(args),
        Command::Health(args) => commands::health::run(args),
        Command::Check(args) => commands::check::run(args),
        Command::Completions(args) => commands::docs::completions(args.shell),
        Command::Man => commands::docs::man_page(),
        Command::Cluster(args) => commands::cluster::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<commands::NotFound>().is_some()
                || e.downcast_ref::<commands::health::NotServing>().is_some()
                || e.downcast_ref::<commands::check::Violates>().is_some() =>
        {
            eprintln!("ctwatch: {}", one_line(&format!("{e:#}")));
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("ctwatch: {}", one_line(&format!("{e:#}")));
            ExitCode::from(2)
        }
    }
}

/// A clap error on one line: what is wrong, and where to read more.
fn usage_error(e: &clap::Error) -> ExitCode {
    let rendered = e.to_string();
    let mut lines = rendered.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut first = lines.next().unwrap_or("invalid arguments").trim_start_matches("error: ").to_string();
    if first.ends_with(':') {
        // "the following required arguments were not provided:" names them on the next line.
        if let Some(next) = lines.next().filter(|l| !l.starts_with("Usage:")) {
            first = format!("{first} {next}");
        }
    }
    let tip =
        rendered.lines().find_map(|l| l.trim().strip_prefix("tip: ")).map(|t| format!("; {t}")).unwrap_or_default();
    eprintln!("ctwatch: {first}{tip} (see 'ctwatch --help')");
    ExitCode::from(2)
}

fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}
