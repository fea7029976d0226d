//! `vbs`: the command line of the vbs block store. Everything but the entry point is in [`cli`].

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
