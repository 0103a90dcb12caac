//! How to test your own data handling with `datastorer::testing`: two
//! "servers" over one in-memory backend, a paused clock, injected faults,
//! a crash. Run it: `cargo run --example harness_walkthrough --features harness`.
//! The same code goes into a `#[actix_rt::test]` in your own crate.

use std::time::Duration;

use datastorer::testing::{Cluster, ErrorKind, OpKind};
use datastorer::{AcquirePolicy, Error, Priority, StoreSpec};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Cart {
    items: Vec<String>,
}

fn main() {
    actix::System::new().block_on(async {
        // Time moves only when we say so: autosave, lease expiry and backoff
        // all follow tokio's clock.
        tokio::time::pause();
        let mut cluster = Cluster::start(2).await;
        let spec = || StoreSpec::new(Cart { items: vec![] });
        let carts_a = cluster.node(0).store("carts", spec()).unwrap();
        let carts_b = cluster.node(1).store("carts", spec()).unwrap();

        // Node A takes the cart and adds an item; autosave writes it.
        let cart = carts_a.open("user-1").await.unwrap();
        cart.update(|c| c.items.push("apple".into())).await.unwrap();
        cluster.advance(Duration::from_secs(31)).await;
        cluster.drain().await;
        cluster.assert_stored("carts", "user-1", &Cart { items: vec!["apple".into()] });
        println!("autosave wrote the cart after 31 s of (paused) time");

        // The disk hiccups: three transient write failures, then it works.
        cluster.backend().fail_next(OpKind::Write, None, 3, ErrorKind::Transient);
        cart.update(|c| c.items.push("pear".into())).await.unwrap();
        let saved = cart.save(Priority::Normal).await.unwrap();
        println!("save survived 3 transient failures (revision {})", saved.revision);

        // Node B must not get the cart while A holds it...
        match carts_b.open("user-1").policy(AcquirePolicy::Fail).await {
            Err(Error::LeaseHeld { holder, .. }) => println!("node B refused: held by {holder}"),
            other => panic!("expected LeaseHeld, got {other:?}"),
        }
        // ...until A crashes (no save, no release) and its lease lapses.
        cart.update(|c| c.items.push("lost-in-crash".into())).await.unwrap();
        cluster.crash(0).await;
        cluster.advance(Duration::from_secs(91)).await;
        let taken = carts_b.open("user-1").policy(AcquirePolicy::Fail).await.unwrap();
        let items = taken.read(|c| c.items.clone()).await.unwrap();
        assert_eq!(items, vec!["apple".to_string(), "pear".to_string()]);
        println!("node B took over after the lease lapsed: {items:?} (the unsaved item died with node A)");
    });
}
