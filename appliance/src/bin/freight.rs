//! `freight`: the command-line tool of the Freight appliance (verbs in
//! `freight_appliance::cli`).

fn main() {
    freight_appliance::cli::main()
}
