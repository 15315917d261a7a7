fn main() -> std::process::ExitCode {
    cargo_klp::main()
}
