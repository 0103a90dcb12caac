//! The Luau client (`clients/luau`) against the real `datastorer serve`:
//! its specs run in Luau embedded through mlua, with a Roblox-like
//! `HttpService` (tests/shim in the client) whose requests this file
//! performs on threads. The clock is virtual where nothing is in flight
//! (an hour of play takes seconds) and real while a request is, so the
//! server's own waits and leases still run in real time.
//!
//! Each test runs one spec file in a fresh Luau state and fails on any
//! failed spec or any error in a Luau thread.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::luau::{client_dir, run_spec};
use common::server::Server;
use mlua::{Lua, Table, Value};

fn server(dir: &Path, args: &[&str]) -> Server {
    let mut all = vec!["--access-log", "false"];
    all.extend_from_slice(args);
    Server::process(dir, &all)
}

fn with_server(spec: &str, args: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let s = server(tmp.path(), args);
    let env = HashMap::from([("base_url", s.base.clone())]);
    run_spec(spec, env);
}

const GAME_KEY: &str = "luau-game-server-secret-0001";
const LIMITED_KEY: &str = "luau-limited-secret-00000002";
const ADMIN_KEY: &str = "luau-admin-secret-0000000003";

#[test]
fn luau_api_keys_from_a_secret_and_a_servers_rate_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("datastorer.toml");
    std::fs::write(
        &config,
        format!(
            "[[api_keys]]\nname = \"game\"\nkey = \"{GAME_KEY}\"\nrole = \"write\"\n\n\
             [[api_keys]]\nname = \"limited\"\nkey = \"{LIMITED_KEY}\"\nrole = \"write\"\nrequests_per_minute = 60\n\n\
             [[api_keys]]\nname = \"admin\"\nkey = \"{ADMIN_KEY}\"\nrole = \"admin\"\n"
        ),
    )
    .unwrap();
    let s = server(tmp.path(), &["--config", config.to_str().unwrap()]);
    let env = HashMap::from([
        ("base_url", s.base.clone()),
        ("game_key", GAME_KEY.to_owned()),
        ("limited_key", LIMITED_KEY.to_owned()),
        ("admin_key", ADMIN_KEY.to_owned()),
    ]);
    run_spec("specs/Auth.spec", env);
}

#[test]
fn luau_unit_specs_of_the_queue_budget_json_and_transport() {
    run_spec("specs/Unit.spec", HashMap::new());
}

#[test]
fn luau_the_in_memory_mock_serves_the_same_flows_without_a_server() {
    run_spec("specs/Mock.spec", HashMap::new());
}

/// The same contract against the real server and against the Mock, so the
/// Mock a game plays against in Studio cannot drift from the server.
#[test]
fn luau_one_contract_holds_against_the_server() {
    with_server("specs/Contract.spec", &[]);
}

#[test]
fn luau_one_contract_holds_against_the_mock() {
    run_spec("specs/Contract.spec", HashMap::new());
}

#[test]
fn luau_version_history_and_a_restore_that_ends_the_session() {
    with_server("specs/History.spec", &[]);
}

#[test]
fn luau_the_data_store_service_facade() {
    with_server("specs/DataStoreService.spec", &[]);
}

#[test]
fn luau_join_play_autosave_leave_with_faults() {
    with_server("specs/Sessions.spec", &[]);
}

#[test]
fn luau_teleport_hand_off_and_crash_takeover() {
    // A short client lease: a crashed game server's sessions lapse in 3 s.
    with_server("specs/Handoff.spec", &["--client-lease-ttl-secs", "3"]);
}

#[test]
fn luau_gift_messages_and_the_ppdb_facade() {
    with_server("specs/Messages.spec", &[]);
}

#[test]
fn luau_bind_to_close_releases_a_hundred_players_within_30_seconds() {
    with_server("specs/Shutdown.spec", &[]);
}

#[test]
fn luau_an_hour_of_a_hundred_players_stays_within_the_request_budget() {
    with_server("specs/HourOfPlay.spec", &[]);
}

/// In Roblox the package is ModuleScripts, as Rojo maps
/// `clients/luau/src/Datastorer` (`init.luau` the module, each other file a
/// child), each with its own `script`, and `require` takes instances, not
/// paths. This loads it that way, with a `require` that refuses strings, so
/// every module's Roblox branch is the one that runs.
#[test]
fn luau_the_package_loads_as_roblox_module_scripts() {
    let lua = Lua::new();
    let dir = client_dir().join("src/Datastorer");
    let root = lua.create_table().unwrap();
    root.set("Name", "Datastorer").unwrap();
    root.set("__path", dir.join("init.luau").to_str().unwrap()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".luau") && n != "init.luau")
        .collect();
    names.sort();
    assert!(names.len() >= 8, "{names:?}");
    for name in &names {
        let child = lua.create_table().unwrap();
        let stem = name.trim_end_matches(".luau");
        child.set("Name", stem).unwrap();
        child.set("Parent", root.clone()).unwrap();
        child.set("__path", dir.join(name).to_str().unwrap()).unwrap();
        root.set(stem, child).unwrap();
    }
    let cache = lua.create_table().unwrap();
    let require = lua
        .create_function(move |lua, module: Value| {
            let Value::Table(instance) = module else {
                return Err(mlua::Error::runtime("require takes a ModuleScript here, not a path"));
            };
            if let Value::Table(done) = cache.raw_get::<Value>(instance.clone())? {
                return Ok(Value::Table(done));
            }
            let path: String = instance.get("__path")?;
            let source = std::fs::read_to_string(&path).map_err(mlua::Error::external)?;
            let env = lua.create_table()?;
            env.set("script", instance.clone())?;
            let meta = lua.create_table()?;
            meta.set("__index", lua.globals())?;
            env.set_metatable(Some(meta))?;
            let value: Value = lua.load(source).set_name(format!("={path}")).set_environment(env).call(())?;
            cache.raw_set(instance, value.clone())?;
            Ok(value)
        })
        .unwrap();
    lua.globals().set("require", require).unwrap();
    // Where the README tells a Wally user to find it: Wally puts server
    // dependencies in `ServerPackages`, mapped under ServerStorage.
    let readme = std::fs::read_to_string(client_dir().join("README.md")).unwrap();
    let documented = readme
        .lines()
        .find(|l| l.trim_start().starts_with("local Datastorer = require(game."))
        .expect("the README shows how to require the package")
        .split("--")
        .next()
        .unwrap()
        .trim()
        .to_owned();
    assert!(documented.contains("ServerStorage.ServerPackages.Datastorer"), "{documented}");
    let folder = |name: &str, child: &str, value: Table| {
        let t = lua.create_table().unwrap();
        t.set("Name", name).unwrap();
        t.set(child, value).unwrap();
        t
    };
    let game = folder(
        "game",
        "ServerStorage",
        folder("ServerStorage", "ServerPackages", folder("ServerPackages", "Datastorer", root)),
    );
    lua.globals().set("game", game).unwrap();
    let checked: String = lua
        .load(format!(
            r#"
            {documented}
            assert(type(Datastorer.new) == "function" and type(Datastorer.Configure) == "function")
            assert(Datastorer.Json.encode({{ Inventory = {{}} }}) == '{{"Inventory":{{}}}}')
            local ok, err = pcall(Datastorer.GetDatastore, Datastorer, "players", {{}})
            assert(not ok and string.find(err, "Configure", 1, true), err)
            return "loaded"
            "#
        ))
        .eval()
        .unwrap_or_else(|e| panic!("the package does not load as ModuleScripts from where the README says: {e}"));
    assert_eq!(checked, "loaded");
}
