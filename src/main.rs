fn main() -> std::process::ExitCode {
    ec2ami::cli::main()
}
