use std::process::ExitCode;

fn main() -> ExitCode {
    penstock::cli::main()
}
