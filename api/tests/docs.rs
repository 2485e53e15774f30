//! README.md's configuration reference must list exactly the settings the code has.

#[test]
fn readme_configuration_table_matches_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = tidegate::cli::config_reference_markdown();
    assert!(
        readme.contains(table.trim_end()),
        "README.md's configuration table is stale: replace it with the output of `tidegate config`"
    );
}
