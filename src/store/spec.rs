//! How a store is defined (`StoreSpec`) and the naming rules of stores and
//! keys (`Key`, `validate_*`), the same for every entry point.
//!
//! Must not: hold state; a store's live state is `StoreShared`'s.

#[allow(unused_imports)]
use super::*;

/// How a store is defined. Two `store()` calls for one name must agree on
/// the type, template, metadata template, migration names and hooks.
pub struct StoreSpec<T> {
    /// The document of a new key; also the source of fields that reconcile
    /// adds to old records.
    pub template: T,
    /// Step `i` migrates data version `i` to `i + 1`. New records start at
    /// `migrations.len()`.
    pub migrations: Vec<Migration>,
    /// Metadata of a new key, reconciled into old records like the template.
    pub metadata_template: Value,
    /// Optional callbacks.
    pub hooks: Hooks<T>,
    /// Which versions of its keys the store keeps (every save is one).
    pub retention: Retention,
    /// What an erasure by user id does to a record of this store tagged
    /// with the id (default: delete it, with its versions and inbox).
    pub erase: EraseMode,
}

impl<T> StoreSpec<T> {
    /// A spec with no migrations, an empty metadata object and no hooks.
    pub fn new(template: T) -> Self {
        Self {
            template,
            migrations: Vec::new(),
            metadata_template: Value::Object(Default::default()),
            hooks: Hooks::default(),
            retention: Retention::default(),
            erase: EraseMode::Delete,
        }
    }

    /// Sets what an erasure by user id does to this store's records.
    pub fn erase(mut self, mode: EraseMode) -> Self {
        self.erase = mode;
        self
    }

    /// Sets how long versions are kept (`Retention::off()`: none).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// Adds a migration step.
    pub fn migration(mut self, m: Migration) -> Self {
        self.migrations.push(m);
        self
    }

    /// Sets the metadata template.
    pub fn metadata_template(mut self, metadata: Value) -> Self {
        self.metadata_template = metadata;
        self
    }

    /// Sets the after-load hook.
    pub fn after_load(mut self, hook: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.hooks.after_load = Some(Arc::new(hook));
        self
    }

    /// Sets the before-save hook.
    pub fn before_save(mut self, hook: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.hooks.before_save = Some(Arc::new(hook));
        self
    }
}

/// A key: any non-empty UTF-8 string up to 512 bytes without control
/// characters. Numbers are accepted and stored as their decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(pub(super) String);

impl Key {
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Self {
        Key(s.to_owned())
    }
}
impl From<String> for Key {
    fn from(s: String) -> Self {
        Key(s)
    }
}
impl From<&String> for Key {
    fn from(s: &String) -> Self {
        Key(s.clone())
    }
}
macro_rules! numeric_key {
    ($($t:ty),*) => {$(
        impl From<$t> for Key {
            fn from(n: $t) -> Self { Key(n.to_string()) }
        }
    )*};
}
numeric_key!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

/// Longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 512;
/// Longest store name accepted, in bytes.
pub const MAX_STORE_NAME_LEN: usize = 128;

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a key: non-empty, at most 512 bytes, no control characters.
pub fn validate_key(key: &str) -> Result<(), Error> {
    let reason = if key.is_empty() {
        Some("must not be empty")
    } else if key.len() > MAX_KEY_LEN {
        Some("is longer than 512 bytes")
    } else if key.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName { what: "key", value: truncated(key), reason }),
        None => Ok(()),
    }
}

/// The suffix of the store holding a store's messages (`S:inbox`):
/// reserved, no application store may have a name ending in it.
pub const INBOX_SUFFIX: &str = ":inbox";

/// Checks the name of a store an application (or a config file, an import
/// file, an HTTP request) names: [`validate_store_name`], and not a name
/// reserved for messages (ending in `:inbox`). The one rule every entry
/// point applies.
pub fn validate_user_store_name(name: &str) -> Result<(), Error> {
    validate_store_name(name)?;
    if name.ends_with(INBOX_SUFFIX) {
        return Err(Error::InvalidName {
            what: "store name",
            value: truncated(name),
            reason: "names ending in \":inbox\" are reserved for messages to keys",
        });
    }
    Ok(())
}

/// Checks a store name: 1 to 128 bytes of ASCII letters, digits, `_ - . :`.
pub fn validate_store_name(name: &str) -> Result<(), Error> {
    let reason = if name.is_empty() {
        Some("must not be empty")
    } else if name.len() > MAX_STORE_NAME_LEN {
        Some("is longer than 128 bytes")
    } else if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
        Some("may contain only ASCII letters, digits, '_', '-', '.' and ':'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName { what: "store name", value: truncated(name), reason }),
        None => Ok(()),
    }
}
