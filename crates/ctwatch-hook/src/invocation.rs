//! What a runtime was asked to do, from its argv: `runc [global flags]
//! create|run [flags] ID`, the same for crun, and `conmon -c ID -b BUNDLE ...`.

use crate::binaries::RuntimeTool;

/// A runtime invocation that creates a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateCall {
    /// `create` or `run` (runc/crun), `conmon` for conmon.
    pub command: String,
    /// The container ID.
    pub id: String,
    /// `--bundle`/`-b` (the runtime's working directory when absent, for runc/crun).
    pub bundle: Option<String>,
    /// `--pid-file` (conmon: `-p`/`--container-pidfile`).
    pub pid_file: Option<String>,
    /// The global `--root` (the runtime's state directory).
    pub root: Option<String>,
    /// crun's `--config`/`-f`: a config file other than `<bundle>/config.json`.
    pub config: Option<String>,
    /// conmon's `-n`/`--name`.
    pub name: Option<String>,
    /// conmon's `-r`/`--runtime`.
    pub runtime_binary: Option<String>,
}

/// What an exec of a runtime binary is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// It creates a container: held until ctwatch has read its config.
    Create(CreateCall),
    /// Anything else (`init` re-execs, `start`, `state`, `delete`, `exec`,
    /// `--version`...): answered at once.
    Other {
        /// The subcommand, or what stood in its place (empty when none).
        command: String,
    },
}

/// runc/crun global flags that take a value (the rest are booleans).
const GLOBAL_VALUE_FLAGS: &[&str] =
    &["--log", "--log-format", "--log-level", "--root", "--criu", "--rootless", "--cgroup-manager"];
/// `create`/`run` flags that take a value.
const CREATE_VALUE_FLAGS: &[&str] =
    &["--bundle", "-b", "--console-socket", "--pid-file", "--preserve-fds", "--config", "-f", "--keep-fds"];

/// Parses the argv (`argv[0]` included) of an exec of `tool`.
pub fn parse(tool: RuntimeTool, argv: &[String]) -> Invocation {
    let first = argv.first().map(String::as_str).unwrap_or("");
    // runc's re-exec of itself as the container's init (`runc init`, or the
    // `runc:[0:PARENT]`-style names of its stages).
    if first.starts_with("runc:[") {
        return Invocation::Other { command: "init".into() };
    }
    match tool {
        RuntimeTool::Conmon => parse_conmon(argv),
        RuntimeTool::Runc | RuntimeTool::Crun => parse_oci_runtime(argv),
    }
}

/// Splits `--flag=value` into the flag and its value.
fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => (flag, Some(value)),
        _ => (arg, None),
    }
}

fn parse_oci_runtime(argv: &[String]) -> Invocation {
    let mut call = CreateCall::default();
    let mut args = argv.iter().skip(1).map(String::as_str);
    let mut command = None;
    while let Some(arg) = args.next() {
        if arg == "--" {
            command = args.next();
            break;
        }
        if !arg.starts_with('-') {
            command = Some(arg);
            break;
        }
        let (flag, inline) = split_flag(arg);
        if GLOBAL_VALUE_FLAGS.contains(&flag) {
            let value = inline.or_else(|| args.next());
            if flag == "--root" {
                call.root = value.map(str::to_string);
            }
        }
    }
    let Some(command) = command else {
        return Invocation::Other { command: String::new() };
    };
    if command != "create" && command != "run" {
        return Invocation::Other { command: command.to_string() };
    }
    call.command = command.to_string();
    let mut only_positional = false;
    while let Some(arg) = args.next() {
        if only_positional || !arg.starts_with('-') || arg == "-" {
            if call.id.is_empty() {
                call.id = arg.to_string();
            }
            continue;
        }
        if arg == "--" {
            only_positional = true;
            continue;
        }
        let (flag, inline) = split_flag(arg);
        if !CREATE_VALUE_FLAGS.contains(&flag) {
            continue;
        }
        let value = inline.or_else(|| args.next()).map(str::to_string);
        match flag {
            "--bundle" | "-b" => call.bundle = value,
            "--pid-file" => call.pid_file = value,
            "--config" | "-f" => call.config = value,
            _ => {}
        }
    }
    if call.id.is_empty() {
        return Invocation::Other { command: call.command };
    }
    Invocation::Create(call)
}

fn parse_conmon(argv: &[String]) -> Invocation {
    let mut call = CreateCall { command: "conmon".into(), ..CreateCall::default() };
    let mut args = argv.iter().skip(1).map(String::as_str);
    let mut exec = false;
    while let Some(arg) = args.next() {
        let (flag, inline) = split_flag(arg);
        let mut value = || inline.or_else(|| args.next()).map(str::to_string);
        match flag {
            "-c" | "--cid" => call.id = value().unwrap_or_default(),
            "-n" | "--name" => call.name = value(),
            "-b" | "--bundle" => call.bundle = value(),
            "-p" | "--container-pidfile" => call.pid_file = value(),
            "-r" | "--runtime" => call.runtime_binary = value(),
            "-e" | "--exec" => exec = true,
            "--version" | "-h" | "--help" => return Invocation::Other { command: flag.to_string() },
            // Every other conmon option that takes a value: skip the value.
            other if inline.is_none() && CONMON_VALUE_OPTIONS.contains(&other) => {
                args.next();
            }
            _ => {}
        }
    }
    if exec || call.id.is_empty() {
        return Invocation::Other { command: if exec { "exec".into() } else { String::new() } };
    }
    Invocation::Create(call)
}

/// conmon's options that take a value, apart from those read above
/// (its flags without a value need no entry: they consume nothing).
const CONMON_VALUE_OPTIONS: &[&str] = &[
    "-u",
    "--cuuid",
    "-l",
    "--log-path",
    "--socket-dir-path",
    "--exit-dir",
    "--exit-command",
    "--exit-command-arg",
    "--exit-delay",
    "--runtime-arg",
    "--runtime-opt",
    "--log-level",
    "--log-tag",
    "--log-size-max",
    "-P",
    "--conmon-pidfile",
    "-T",
    "--timeout",
    "--exec-process-spec",
    "--restore",
    "--restore-arg",
    "--persist-dir",
    "--sdnotify-socket",
    "--api-version",
    "--seccomp-notify-socket",
    "--seccomp-notify-plugins",
    "--log-global-size-max",
    "--log-allowlist-dir",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn containerd_shim_create_with_global_flags_first() {
        let call = parse(
            RuntimeTool::Runc,
            &argv(
                "runc --root /var/run/docker/runtime-runc/moby --log /run/x/log.json --log-format json \
                 --systemd-cgroup create --bundle /run/b/moby/abc --pid-file /run/b/moby/abc/init.pid abc",
            ),
        );
        assert_eq!(
            call,
            Invocation::Create(CreateCall {
                command: "create".into(),
                id: "abc".into(),
                bundle: Some("/run/b/moby/abc".into()),
                pid_file: Some("/run/b/moby/abc/init.pid".into()),
                root: Some("/var/run/docker/runtime-runc/moby".into()),
                ..CreateCall::default()
            })
        );
    }

    #[test]
    fn equals_forms_and_run_without_bundle() {
        let Invocation::Create(call) = parse(RuntimeTool::Crun, &argv("crun --root=/r run -d --pid-file=/p c1")) else {
            panic!()
        };
        assert_eq!(
            (call.command.as_str(), call.id.as_str(), call.bundle, call.root),
            ("run", "c1", None, Some("/r".into()))
        );
        assert_eq!(call.pid_file.as_deref(), Some("/p"));
    }

    #[test]
    fn other_subcommands_and_reexecs_are_not_creates() {
        for (line, command) in [
            ("runc init", "init"),
            ("runc:[2:INIT]", "init"),
            ("runc --root /r start abc", "start"),
            ("runc --root /r delete --force abc", "delete"),
            ("runc --version", ""),
            ("runc", ""),
            ("runc create", "create"),
            ("runc --root", ""),
        ] {
            assert_eq!(parse(RuntimeTool::Runc, &argv(line)), Invocation::Other { command: command.into() }, "{line}");
        }
        assert_eq!(parse(RuntimeTool::Runc, &[]), Invocation::Other { command: String::new() });
    }

    #[test]
    fn conmon_for_podman() {
        let line = "/usr/bin/conmon --api-version 1 -c 0123 -u 0123 -r /usr/bin/runc -b /var/lib/c/0123/userdata \
                    -p /run/c/0123/userdata/pidfile -n happy_name --exit-dir /run/libpod/exits --full-attach \
                    -s -l k8s-file:/x/ctr.log --log-level warning --syslog --conmon-pidfile /run/c/conmon.pid \
                    --exit-command /usr/bin/podman --exit-command-arg --root";
        let Invocation::Create(call) = parse(RuntimeTool::Conmon, &argv(line)) else { panic!() };
        assert_eq!(call.id, "0123");
        assert_eq!(call.bundle.as_deref(), Some("/var/lib/c/0123/userdata"));
        assert_eq!(call.pid_file.as_deref(), Some("/run/c/0123/userdata/pidfile"));
        assert_eq!(call.name.as_deref(), Some("happy_name"));
        assert_eq!(call.runtime_binary.as_deref(), Some("/usr/bin/runc"));
        assert_eq!(
            parse(RuntimeTool::Conmon, &argv("conmon -c 0123 -b /b --exec -p /p")),
            Invocation::Other { command: "exec".into() }
        );
    }
}
