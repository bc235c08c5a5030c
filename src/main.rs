//! The `rawfs` command.

fn main() -> std::process::ExitCode {
    rawfs::cli::main()
}
