//! Hand-offs stay honest over HTTP: a holder that cannot save keeps its
//! session, every open takes a new epoch and never inherits another
//! client's unsaved state, and a client whose session ended learns why
//! (`410 session_ended` with the reason and who took over), as does the
//! change feed.

mod common;

use std::time::{Duration, Instant};

use common::server::{call, event_data, key_url, open, read_feed_until, token_of, Server};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

/// Polls `GET …/session` with `token` until it is no longer 200 (bounded).
async fn ended(c: &Client, s: &Server, key: &str, token: &str) -> (StatusCode, Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (st, v) =
            call(c, s, Method::GET, &format!("{}/session", key_url("profiles", key)), Some(token), None).await;
        if st != StatusCode::OK || Instant::now() > deadline {
            return (st, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_ended(answer: &(StatusCode, Value), reason: &str, by: Option<&str>) {
    let (st, v) = answer;
    assert_eq!(*st, StatusCode::GONE, "{v}");
    assert_eq!(v["code"], "session_ended", "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    assert_eq!(v["taken_over_by"], by.map_or(Value::Null, |b| json!(b)), "{v}");
}

#[tokio::test]
async fn a_hand_off_that_cannot_save_leaves_the_holder_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    let k = key_url("profiles", "big");
    let blob = "x".repeat(20_000);
    // A document written under a larger limit, then served under a smaller one:
    // its holder can read it but cannot save it as it is.
    let mut s = Server::start(tmp.path(), &["--max-body-bytes", "100000"]);
    let (_, v) = open(&c, &s, "profiles", "big", json!({"client_id": "alice"})).await;
    let (st, _) = call(
        &c,
        &s,
        Method::PUT,
        &format!("{k}/session/data?save=normal"),
        Some(&token_of(&v)),
        Some(json!({"blob": blob})),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.stop().success());
    let s = Server::start(tmp.path(), &["--max-body-bytes", "10000"]);

    let (st, alice) = open(&c, &s, "profiles", "big", json!({"client_id": "alice"})).await;
    assert_eq!(st, StatusCode::OK, "{alice}");
    let t = token_of(&alice);
    // A change whose result cannot be saved is refused at the change.
    let (st, v) = call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&t), Some(json!({"more": 1}))).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::PAYLOAD_TOO_LARGE, json!("document_too_large")), "{v}");
    let (_, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(live["data"], json!({"blob": blob}), "the refused change left the session unchanged");

    // Bob asks for the key: the holder cannot save, so nothing is handed over.
    let (st, v) =
        open(&c, &s, "profiles", "big", json!({"client_id": "bob", "policy": "request_release", "timeout_ms": 1000}))
            .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!((v["code"].clone(), v["holder"].clone()), (json!("holder_could_not_save"), json!("alice")), "{v}");
    let (st, live) = call(&c, &s, Method::GET, &format!("{k}/session"), Some(&t), None).await;
    assert_eq!(st, StatusCode::OK, "alice's session survived: {live}");
    assert_eq!((live["data"].clone(), live["epoch"].clone()), (json!({"blob": blob}), alice["epoch"].clone()));

    // Once alice shrinks it, the hand-off goes through, at a new epoch.
    let (st, _) =
        call(&c, &s, Method::PATCH, &format!("{k}/session/data"), Some(&t), Some(json!({"blob": null, "kept": 1})))
            .await;
    assert_eq!(st, StatusCode::OK);
    let (st, bob) =
        open(&c, &s, "profiles", "big", json!({"client_id": "bob", "policy": "request_release", "timeout_ms": 1000}))
            .await;
    assert_eq!(st, StatusCode::OK, "{bob}");
    assert_eq!(bob["data"], json!({"kept": 1}), "the holder's last change travelled with the hand-off");
    assert!(bob["epoch"].as_u64() > alice["epoch"].as_u64());
    assert_ended(&ended(&c, &s, "big", &t).await, "release_requested", Some("bob"));
}

#[tokio::test]
async fn a_client_whose_session_ended_learns_why_and_the_feed_tells_the_ends_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    let mut s = Server::start(tmp.path(), &["--client-lease-ttl-secs", "2"]);
    let mut feed = c.get(s.url("/v1/changes?store=profiles")).send().await.unwrap();
    assert!(String::from_utf8_lossy(&feed.chunk().await.unwrap().unwrap()).contains("connected"));
    let session = |key: &str| format!("{}/session", key_url("profiles", key));

    // Released and closed by the client itself.
    let (_, v) = open(&c, &s, "profiles", "rel", json!({})).await;
    let released = token_of(&v);
    call(&c, &s, Method::POST, &format!("{}/release", session("rel")), Some(&released), None).await;
    assert_ended(&ended(&c, &s, "rel", &released).await, "released", None);
    let (_, v) = open(&c, &s, "profiles", "clo", json!({})).await;
    let closed = token_of(&v);
    call(&c, &s, Method::DELETE, &session("clo"), Some(&closed), None).await;
    assert_ended(&ended(&c, &s, "clo", &closed).await, "closed", None);

    // Stolen (with ?policy= in the query): the thief gets a new epoch and
    // none of the old holder's unsaved state.
    let (_, alice) = open(&c, &s, "profiles", "st", json!({"client_id": "alice"})).await;
    let at = token_of(&alice);
    call(&c, &s, Method::PATCH, &format!("{}/data", session("st")), Some(&at), Some(json!({"unsaved": true}))).await;
    let (st, bob) =
        call(&c, &s, Method::POST, &format!("{}?policy=steal", session("st")), None, Some(json!({"client_id": "bob"})))
            .await;
    assert_eq!(st, StatusCode::OK, "{bob}");
    assert_eq!(bob["epoch"].as_u64().unwrap(), alice["epoch"].as_u64().unwrap() + 1);
    assert_eq!(bob["data"], json!({}), "a client never inherits another client's unsaved state");
    assert_ended(&ended(&c, &s, "st", &at).await, "stolen", Some("bob"));

    // Deleted by an administrator: without force the 409 names the client
    // holder and its real expiry; with force the session ends at once.
    let (_, v) = open(&c, &s, "profiles", "del", json!({"client_id": "carol"})).await;
    let deleted = token_of(&v);
    let (st, v) = call(&c, &s, Method::DELETE, &key_url("profiles", "del"), None, None).await;
    assert_eq!(
        (st, v["code"].clone(), v["holder"].clone()),
        (StatusCode::CONFLICT, json!("lease_held"), json!("carol")),
        "{v}"
    );
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(v["expires_at_ms"].as_u64().unwrap() > now_ms, "{v}");
    let (st, _) = call(&c, &s, Method::DELETE, &format!("{}?force=true", key_url("profiles", "del")), None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_ended(&ended(&c, &s, "del", &deleted).await, "deleted", None);

    // Expired: the client stops renewing (2 s client lease); the server
    // saves its session and the client is told why when it comes back.
    let (_, v) = open(&c, &s, "profiles", "exp", json!({})).await;
    let expired = token_of(&v);
    // Silence (every request would renew it): longer than the client lease,
    // so a lower bound that holds on any machine.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let answer = ended(&c, &s, "exp", &expired).await;
    assert_eq!(answer.0, StatusCode::GONE, "{:?}", answer.1);
    assert_eq!(answer.1["reason"], "expired", "{}", answer.1);

    let text = read_feed_until(&mut feed, &["released", "closed", "stolen"]).await;
    assert_eq!(event_data(&text, "released")["key"], "rel");
    assert_eq!(event_data(&text, "closed")["key"], "clo");
    assert_eq!(event_data(&text, "stolen")["key"], "st");
    drop(feed);

    // Shutdown: a token from before a restart is answered as such.
    let (_, v) = open(&c, &s, "profiles", "down", json!({})).await;
    let before_restart = token_of(&v);
    assert!(s.stop().success());
    let s = Server::start(tmp.path(), &[]);
    let answer = ended(&c, &s, "down", &before_restart).await;
    assert_ended(&answer, "server_restarted", None);
    assert_eq!(answer.1["ended_at_ms"], Value::Null, "when is not known here: {}", answer.1);
    // A token this server never issued is still just invalid.
    let (st, v) = call(&c, &s, Method::GET, &session("down"), Some("0123456789abcdef"), None).await;
    assert_eq!((st, v["code"].clone()), (StatusCode::CONFLICT, json!("invalid_lease_token")));
}

#[tokio::test]
async fn a_full_page_of_keys_hands_out_no_cursor_to_an_empty_page() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    let mut s = Server::start(tmp.path(), &[]);
    for key in ["a", "b"] {
        let (_, v) = open(&c, &s, "profiles", key, json!({})).await;
        call(&c, &s, Method::POST, &format!("{}/session/release", key_url("profiles", key)), Some(&token_of(&v)), None)
            .await;
    }
    let (_, page) = call(&c, &s, Method::GET, "/v1/stores/profiles/keys?limit=2", None, None).await;
    assert_eq!((page["keys"].clone(), page["next_cursor"].clone()), (json!(["a", "b"]), Value::Null), "{page}");
    let (_, page) = call(&c, &s, Method::GET, "/v1/stores/profiles/keys?limit=1", None, None).await;
    assert_eq!((page["keys"].clone(), page["next_cursor"].clone()), (json!(["a"]), json!("a")), "{page}");
    assert!(s.stop().success());
}

/// A token from before a `kill -9` is answered the same way: the server
/// restarted, when unknown (no shutdown ran, so none is claimed).
#[tokio::test]
async fn a_token_from_before_a_kill_says_the_server_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Client::new();
    let mut s = Server::process(tmp.path(), &["--owner-id", "srv"]);
    let (_, v) = open(&c, &s, "profiles", "k", json!({})).await;
    let before = token_of(&v);
    s.kill();
    let s = Server::process(tmp.path(), &["--owner-id", "srv"]);
    let answer = ended(&c, &s, "k", &before).await;
    assert_ended(&answer, "server_restarted", None);
    assert_eq!(answer.1["ended_at_ms"], Value::Null, "{}", answer.1);
    let message = answer.1["message"].as_str().unwrap();
    assert!(message.contains("restarted") && !message.contains("shutdown"), "{message}");
}
