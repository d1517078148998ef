use clap::Parser;

fn main() {
    let cli = match fractaldb::cli::Cli::try_parse() {
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
    if let Err(e) = fractaldb::cli::run(cli) {
        fractaldb::say!("fractaldb: error: {e}");
        std::process::exit(1);
    }
}
