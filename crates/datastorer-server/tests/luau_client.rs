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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::server::Server;
use mlua::{Lua, Table, Value};

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/luau").canonicalize().expect("clients/luau")
}

/// A finished request: status, lower-cased headers and body, or the
/// transport error.
type Answer = Result<(u16, String, Vec<(String, String)>, String), String>;

#[derive(Default)]
struct Http {
    done: Mutex<Vec<(u64, Answer)>>,
    arrived: Condvar,
    in_flight: Mutex<usize>,
}

struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    timeout: Duration,
}

fn perform(client: &reqwest::blocking::Client, r: Request) -> Answer {
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = client.request(method, &r.url).timeout(r.timeout);
    for (k, v) in &r.headers {
        req = req.header(k, v);
    }
    if let Some(b) = r.body {
        req = req.body(b);
    }
    match req.send() {
        Ok(resp) => {
            let status = resp.status();
            let reason = status.canonical_reason().unwrap_or("").to_owned();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_ascii_lowercase(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let body = resp.text().map_err(|e| format!("ConnectionClosed: {e}"))?;
            Ok((status.as_u16(), reason, headers, body))
        }
        Err(e) if e.is_timeout() => Err("TimedOut".into()),
        Err(e) if e.is_connect() => Err("ConnectFail".into()),
        Err(e) => Err(format!("NetFail: {e}")),
    }
}

fn request_of(t: &Table) -> mlua::Result<Request> {
    let mut headers = Vec::new();
    if let Some(h) = t.get::<Option<Table>>("headers")? {
        for pair in h.pairs::<String, String>() {
            headers.push(pair?);
        }
    }
    Ok(Request {
        method: t.get("method")?,
        url: t.get("url")?,
        headers,
        body: t.get("body")?,
        timeout: Duration::from_secs_f64(t.get::<Option<f64>>("timeout")?.unwrap_or(30.0)),
    })
}

fn answer_table(lua: &Lua, a: Answer) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    match a {
        Ok((status, reason, headers, body)) => {
            t.set("status", status)?;
            t.set("reason", reason)?;
            let h = lua.create_table()?;
            // A repeated header keeps its last value, as HttpService does.
            for (k, v) in headers {
                h.set(k, v)?;
            }
            t.set("headers", h)?;
            t.set("body", body)?;
        }
        Err(e) => t.set("error", e)?,
    }
    Ok(t)
}

/// JSON as Roblox's JSONDecode gives it: null becomes nil.
fn json_to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<Value> {
    Ok(match v {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::String(lua.create_string(s)?),
        serde_json::Value::Array(a) => {
            let t = lua.create_table()?;
            for (i, item) in a.iter().enumerate() {
                t.raw_set(i + 1, json_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
        serde_json::Value::Object(o) => {
            let t = lua.create_table()?;
            for (k, item) in o {
                t.raw_set(k.as_str(), json_to_lua(lua, item)?)?;
            }
            Value::Table(t)
        }
    })
}

/// The host functions the shim's scheduler and HttpService use.
fn install_host(lua: &Lua, env: &HashMap<&str, String>) -> mlua::Result<()> {
    let host = lua.create_table()?;
    let start = Instant::now();
    let skipped = Arc::new(Mutex::new(0.0f64));
    let http = Arc::new(Http::default());
    let client = reqwest::blocking::Client::builder().pool_max_idle_per_host(16).build().expect("HTTP client");
    let next_id = Arc::new(Mutex::new(0u64));

    let s = skipped.clone();
    host.set("now", lua.create_function(move |_, ()| Ok(start.elapsed().as_secs_f64() + *s.lock().unwrap()))?)?;
    // Idle time is skipped, unless a spec asks for real time (when the
    // server's own clock matters between requests: a rate limit refilling).
    let real_time = Arc::new(Mutex::new(false));
    let (s, real) = (skipped.clone(), real_time.clone());
    host.set(
        "skip",
        lua.create_function(move |_, dt: f64| {
            if *real.lock().unwrap() {
                std::thread::sleep(Duration::from_secs_f64(dt.clamp(0.0, 5.0)));
            } else {
                *s.lock().unwrap() += dt.max(0.0);
            }
            Ok(())
        })?,
    )?;
    host.set(
        "set_real_time",
        lua.create_function(move |_, on: bool| {
            *real_time.lock().unwrap() = on;
            Ok(())
        })?,
    )?;
    let (h, c) = (http.clone(), client.clone());
    host.set(
        "http_begin",
        lua.create_function(move |_, t: Table| {
            let r = request_of(&t)?;
            let id = {
                let mut n = next_id.lock().unwrap();
                *n += 1;
                *n
            };
            *h.in_flight.lock().unwrap() += 1;
            let (h, c) = (h.clone(), c.clone());
            std::thread::spawn(move || {
                let answer = perform(&c, r);
                h.done.lock().unwrap().push((id, answer));
                *h.in_flight.lock().unwrap() -= 1;
                h.arrived.notify_all();
            });
            Ok(id)
        })?,
    )?;
    let h = http.clone();
    host.set(
        "http_completed",
        lua.create_function(move |lua, ()| {
            let done: Vec<_> = std::mem::take(&mut *h.done.lock().unwrap());
            let out = lua.create_table()?;
            for (i, (id, a)) in done.into_iter().enumerate() {
                let t = answer_table(lua, a)?;
                t.set("id", id)?;
                out.raw_set(i + 1, t)?;
            }
            Ok(out)
        })?,
    )?;
    let h = http.clone();
    host.set("http_in_flight", lua.create_function(move |_, ()| Ok(*h.in_flight.lock().unwrap()))?)?;
    let h = http.clone();
    host.set(
        "http_wait",
        lua.create_function(move |_, secs: f64| {
            let guard = h.done.lock().unwrap();
            if guard.is_empty() {
                let _ = h.arrived.wait_timeout(guard, Duration::from_secs_f64(secs.clamp(0.0, 5.0)));
            }
            Ok(())
        })?,
    )?;
    // Real time, for a spec that freezes its game server (blocks the whole
    // Luau state) while the server's own clock runs a lease out.
    host.set(
        "sleep",
        lua.create_function(|_, secs: f64| {
            std::thread::sleep(Duration::from_secs_f64(secs.clamp(0.0, 1.0)));
            Ok(())
        })?,
    )?;
    host.set("real_now", lua.create_function(move |_, ()| Ok(start.elapsed().as_secs_f64()))?)?;
    // A request outside the shim (no budget, no faults, no yield): what a
    // spec uses to check the server's side of things.
    let c = client.clone();
    host.set("request", lua.create_function(move |lua, t: Table| answer_table(lua, perform(&c, request_of(&t)?)))?)?;
    host.set(
        "json_decode",
        lua.create_function(|lua, s: String| {
            let v: serde_json::Value =
                serde_json::from_str(&s).map_err(|e| mlua::Error::runtime(format!("Can't parse JSON: {e}")))?;
            json_to_lua(lua, &v)
        })?,
    )?;
    let env_table = lua.create_table()?;
    for (k, v) in env {
        env_table.set(*k, v.as_str())?;
    }
    host.set("env", env_table)?;
    lua.globals().set("host", host)?;
    Ok(())
}

/// Runs one spec file; answers the runner's summary line. Panics with the
/// whole output when a spec failed.
fn run_spec(spec: &str, env: HashMap<&str, String>) -> String {
    let lua = Lua::new();
    install_host(&lua, &env).expect("host functions");
    let dir = client_dir();
    let runner = dir.join("tests/Run.luau");
    let source = std::fs::read_to_string(&runner).expect("tests/Run.luau");
    let chunk = lua.load(source).set_name(format!("@{}", runner.display()));
    let result: mlua::Result<Table> = chunk.call(spec.to_owned());
    let report = result.unwrap_or_else(|e| panic!("{spec}: the runner failed: {e}"));
    let passed: u32 = report.get("passed").unwrap();
    let failed: u32 = report.get("failed").unwrap();
    let output: String = report.get("output").unwrap();
    println!("{output}");
    assert!(failed == 0 && passed > 0, "{spec}: {passed} passed, {failed} failed\n{output}");
    format!("{passed} passed, {failed} failed")
}

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
