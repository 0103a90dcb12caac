//! The Luau harness: a Luau state (mlua) with the host functions the
//! client's headless shim (clients/luau/tests/shim) needs: a clock that
//! skips idle time, HTTP performed on threads, JSON, and file access for
//! loading Roblox packages as instance trees (tests/peers). Used by
//! luau_client.rs and roblox_peers.rs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use mlua::{Lua, Table, Value};

pub fn client_dir() -> PathBuf {
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
pub fn install_host(lua: &Lua, env: &HashMap<&str, String>) -> mlua::Result<()> {
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
    // A signal (KILL unless named) to a process the test started: a
    // datastorer server dying, or stopped for an upgrade.
    host.set(
        "kill",
        lua.create_function(|_, (pid, signal): (u32, Option<String>)| {
            let signal = format!("-{}", signal.as_deref().unwrap_or("KILL"));
            let ok = std::process::Command::new("kill")
                .args([&signal, &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            Ok(ok)
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
    // Wall-clock time in ms (Roblox's DateTime, os.time), plus what the
    // virtual clock skipped, so time a spec skips passes for them too.
    let s = skipped.clone();
    host.set(
        "wall_ms",
        lua.create_function(move |_, ()| {
            let wall = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            Ok(wall + *s.lock().unwrap() * 1000.0)
        })?,
    )?;
    // Files, for packages loaded as instance trees: a directory's entries
    // (name, is_dir), a file's text, and a module compiled with its own
    // environment (Roblox's per-script `script` and globals).
    host.set(
        "list_dir",
        lua.create_function(|lua, path: String| {
            let out = lua.create_table()?;
            let mut entries: Vec<(String, bool)> = std::fs::read_dir(&path)
                .map_err(mlua::Error::external)?
                .filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path().is_dir()))
                .collect();
            entries.sort();
            for (i, (name, dir)) in entries.into_iter().enumerate() {
                let t = lua.create_table()?;
                t.set("name", name)?;
                t.set("dir", dir)?;
                out.raw_set(i + 1, t)?;
            }
            Ok(out)
        })?,
    )?;
    host.set("exists", lua.create_function(|_, path: String| Ok(Path::new(&path).exists()))?)?;
    host.set(
        "load_module",
        lua.create_function(|lua, (path, env): (String, Table)| {
            let source = std::fs::read_to_string(&path).map_err(mlua::Error::external)?;
            lua.load(source).set_name(format!("={path}")).set_environment(env).into_function()
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
pub fn run_spec(spec: &str, env: HashMap<&str, String>) -> String {
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
