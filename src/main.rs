fn main() {
    let cli = match fractaldb::cli::Cli::try_parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version print to stdout: a failed write (`> /dev/full`) must not exit 0.
            let code = e.exit_code();
            if let Err(w) = e.print() {
                fractaldb::say!("fractaldb: error: cannot write: {w}");
                std::process::exit(1);
            }
            if code == 0 {
                use std::io::Write;
                if let Err(w) = std::io::stdout().flush() {
                    fractaldb::say!("fractaldb: error: cannot write: {w}");
                    std::process::exit(1);
                }
            }
            std::process::exit(code);
        }
    };
    if !cli.is_service()
        && let Err(e) = fractaldb::stop_on_signals()
    {
        fractaldb::say!("fractaldb: error: cannot catch SIGINT/SIGTERM: {e}");
        std::process::exit(1);
    }
    match fractaldb::cli::run(cli) {
        Ok(()) => {}
        Err(fractaldb::Error::Interrupted) => {
            // The shell's convention for a run ended by a signal: 128 + its number (130 for Ctrl-C).
            let sig = fractaldb::stop_signal().unwrap_or(2);
            fractaldb::say!(
                "fractaldb: interrupted by signal {sig}: stopped; the files it finished are kept (render, rcdb and mvfdb go on from them with --resume)"
            );
            std::process::exit(128 + sig);
        }
        Err(e) => {
            fractaldb::say!("fractaldb: error: {e}");
            std::process::exit(1);
        }
    }
}
