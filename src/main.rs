fn main() -> std::process::ExitCode {
    vit_workbench::cli::main()
}
