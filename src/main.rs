use clap::Parser;

fn main() {
    let cli = fractaldb::cli::Cli::parse();
    if let Err(e) = fractaldb::cli::run(cli) {
        eprintln!("fractaldb: error: {e}");
        std::process::exit(1);
    }
}
