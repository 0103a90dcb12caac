//! JSON helpers for the server: RFC 7396 merge patch and the declarative
//! migrations a config file can express.
//!
//! Must not: know about HTTP or storage.

use serde::Deserialize;
use serde_json::{Map, Value};

use datastorer::Migration;

/// Applies an RFC 7396 JSON Merge Patch to `target`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(map) = target {
        for (k, v) in patch {
            if v.is_null() {
                map.remove(k);
            } else {
                merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// One declarative migration step, as written in the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum MigrationStep {
    /// Add `field` with `default` if it is missing.
    AddField {
        /// Top-level field name.
        field: String,
        /// Value for records that lack it.
        default: Value,
    },
    /// Rename a top-level field (no-op if `from` is missing; a record that
    /// has both `from` and `to` is refused, never overwritten).
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Remove a top-level field.
    Remove {
        /// Field name.
        field: String,
    },
    /// Apply a JSON merge patch (RFC 7396).
    MergePatch {
        /// The patch.
        patch: Value,
    },
}

impl MigrationStep {
    /// Checks the step; the message says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let empty = |what: &str, v: &str| if v.is_empty() { Err(format!("{what} must not be empty")) } else { Ok(()) };
        match self {
            MigrationStep::AddField { field, .. } | MigrationStep::Remove { field } => empty("field", field),
            MigrationStep::Rename { from, to } => {
                empty("from", from)?;
                empty("to", to)?;
                if from == to {
                    return Err("from and to are the same field".into());
                }
                Ok(())
            }
            MigrationStep::MergePatch { patch } => {
                if patch.is_object() {
                    Ok(())
                } else {
                    Err("patch must be a JSON object".into())
                }
            }
        }
    }

    fn name(&self) -> String {
        match self {
            MigrationStep::AddField { field, default } => format!("add_field {field} = {default}"),
            MigrationStep::Rename { from, to } => format!("rename {from} -> {to}"),
            MigrationStep::Remove { field } => format!("remove {field}"),
            MigrationStep::MergePatch { patch } => format!("merge_patch {patch}"),
        }
    }

    /// The step as an engine migration.
    pub fn to_migration(&self) -> Migration {
        let step = self.clone();
        Migration::new(self.name(), move |mut doc: Value| {
            match &step {
                MigrationStep::MergePatch { patch } => merge_patch(&mut doc, patch),
                other => {
                    let map = doc.as_object_mut().ok_or("document is not a JSON object")?;
                    match other {
                        MigrationStep::AddField { field, default } => {
                            map.entry(field.clone()).or_insert_with(|| default.clone());
                        }
                        MigrationStep::Rename { from, to } => {
                            // Both present: renaming would silently drop one
                            // of them. The record is refused and kept as it is.
                            if map.contains_key(from) && map.contains_key(to) {
                                return Err(format!(
                                    "rename {from} -> {to}: the document has both fields; \
                                     renaming would overwrite {to:?} (the record is left untouched)"
                                ));
                            }
                            if let Some(v) = map.remove(from) {
                                map.insert(to.clone(), v);
                            }
                        }
                        MigrationStep::Remove { field } => {
                            map.remove(field);
                        }
                        MigrationStep::MergePatch { .. } => {}
                    }
                }
            }
            Ok(doc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396_examples() {
        let cases = [
            (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
            (json!({"a":"b"}), json!({"a":null}), json!({})),
            (json!({"a":"b","b":"c"}), json!({"a":null}), json!({"b":"c"})),
            (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
            (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
            (json!({"a":{"b":"c"}}), json!({"a":{"b":"d","c":null}}), json!({"a":{"b":"d"}})),
            (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a":"b"}), json!(["c"]), json!(["c"])),
            (json!({"a":"foo"}), json!(null), json!(null)),
            (json!({"a":"foo"}), json!("bar"), json!("bar")),
            (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
            (json!([1, 2]), json!({"a":"b","c":null}), json!({"a":"b"})),
            (json!({}), json!({"a":{"bb":{"ccc":null}}}), json!({"a":{"bb":{}}})),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn a_rename_onto_an_existing_field_is_refused_not_overwritten() {
        let step = MigrationStep::Rename { from: "gold".into(), to: "coins".into() }.to_migration();
        let both = json!({"gold": 1, "coins": 2});
        let refused = step.apply(both).expect_err("both fields present");
        assert!(refused.reason.contains("overwrite"), "{refused}");
        assert_eq!(step.apply(json!({"gold": 1})).unwrap(), json!({"coins": 1}));
        assert_eq!(step.apply(json!({"coins": 2})).unwrap(), json!({"coins": 2}));
    }
}
