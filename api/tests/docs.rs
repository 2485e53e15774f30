//! README.md's reference tables must match the code: the configuration settings and
//! the client's exit codes.

#[test]
fn readme_configuration_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = tidegate::cli::config_reference_markdown();
    assert!(
        readme.contains(table.trim_end()),
        "README.md's configuration table is stale: replace it with the output of `tidegate config`"
    );
}

#[test]
fn readme_exit_code_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = tidegate::client::exit_codes_markdown();
    assert!(
        readme.contains(table.trim_end()),
        "README.md's exit-code table is stale: replace it with tidegate::client::exit_codes_markdown()"
    );
}
