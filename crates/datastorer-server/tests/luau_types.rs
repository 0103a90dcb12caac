//! The Luau client's `--!strict` modules through Luau's own type checker
//! (its Analysis frontend, via the `luau-analyze` crate): every module
//! checks clean in strict mode. The bounds below stay as a ratchet for a
//! module that ever needs one (a bound above 0 is a debt that can only go
//! down). Sibling modules are `any` to the checker (it checks one chunk at
//! a time, and its "Unknown require" errors, with the `Types.X` names a
//! require would bring, are not counted), so this checks each module's own
//! code.

use std::path::PathBuf;

use luau_analyze::{Checker, Severity};

/// Strict-mode errors each module may have at most: none, for every module.
const BOUNDS: &[(&str, usize)] = &[
    ("Types.luau", 0),
    ("Signal.luau", 0),
    ("Ppdb.luau", 0),
    ("Transport.luau", 0),
    ("Inbox.luau", 0),
    ("Budget.luau", 0),
    ("DataStoreService.luau", 0),
    ("MessagingService.luau", 0),
    ("Store.luau", 0),
    ("Json.luau", 0),
    ("Key.luau", 0),
    ("Queue.luau", 0),
    ("Mock.luau", 0),
    ("init.luau", 0),
];

fn package_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../clients/luau/src/Datastorer")
}

#[test]
fn luau_the_client_modules_are_strict_and_their_type_errors_only_go_down() {
    let mut checker = Checker::new().expect("the Luau checker starts");
    // Roblox's globals the modules name (the services come injected).
    checker
        .add_definitions(
            "declare script: any\ndeclare game: any\ndeclare task: any\ndeclare function warn(...: any): ()\n",
        )
        .expect("definitions load");
    let mut modules: Vec<String> = std::fs::read_dir(package_dir())
        .expect("the client package")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".luau"))
        .collect();
    modules.sort();
    let mut over = Vec::new();
    for name in &modules {
        let source = std::fs::read_to_string(package_dir().join(name)).expect("module source");
        assert!(source.starts_with("--!strict"), "{name} is not --!strict");
        let result = checker.check(&source).expect("the checker runs");
        // The checker sees one chunk at a time: a sibling's `require`, and
        // the `Types.X` names it would bring, are unknown to it (in Roblox
        // they resolve), so those are not counted.
        let errors: Vec<_> = result
            .diagnostics
            .iter()
            .filter(|d| {
                d.severity == Severity::Error
                    && !d.message.starts_with("Unknown require")
                    && !d.message.starts_with("Unknown type 'Types.")
            })
            .collect();
        let bound = BOUNDS.iter().find(|(n, _)| n == name).map(|(_, b)| *b);
        println!("{name}: {} strict-mode errors (bound {bound:?})", errors.len());
        for e in &errors {
            println!("    {e:?}");
        }
        match bound {
            Some(b) if errors.len() <= b => {}
            _ => over.push(format!(
                "{name}: {} errors, bound {bound:?}; first: {:?}",
                errors.len(),
                errors.first().map(|d| (d.line + 1, &d.message))
            )),
        }
    }
    assert!(over.is_empty(), "strict-mode errors above their bound (or a module without one): {over:#?}");
}

#[test]
fn luau_the_type_check_finds_a_type_error() {
    let mut checker = Checker::new().expect("the Luau checker starts");
    let result = checker.check("--!strict\nlocal n: number = \"not a number\"\n").expect("the checker runs");
    assert!(result.diagnostics.iter().any(|d| d.severity == Severity::Error), "{:?}", result.diagnostics);
}
