//! The `outq` command; everything lives in the library.
fn main() -> std::process::ExitCode {
    outq::main()
}
