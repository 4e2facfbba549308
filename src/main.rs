//! The `loci` binary: a thin shell over the library's `cli` module.

fn main() -> std::process::ExitCode {
    loci::cli::main()
}
