//! The ledger behind the API survives SIGKILL: a child `vigil serve` under concurrent transfer
//! load over real HTTP is killed and restarted from its journal. Every acknowledged transfer
//! is there exactly once, nothing unacknowledged is half-applied, balances sum to what was
//! deposited.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vigil_tests::{Running, TempDir};

const TOKEN: &str = "crash-test-token";
const ACCOUNTS: usize = 12;
const DEPOSIT_MINOR: i64 = 1_000_000; // 10,000.00 EUR each

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(port: u16, journal: &Path, log: &Path) -> Running {
    Running(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["serve", "--http", &format!("127.0.0.1:{port}")])
            .arg("--journal")
            .arg(journal)
            .env(
                "VIGIL_API_TOKENS",
                format!("loadgen:payment_service:{TOKEN}"),
            )
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// One request on its own connection: (status, body).
fn request(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {text:?}")))?;
    let payload = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v = serde_json::from_str(payload).unwrap_or(Value::Null);
    Ok((status, v))
}

fn wait_ready(port: u16, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    // Live at once; ready (and taking transfers) once the pipeline has its state in place.
    loop {
        if let Ok((200, _)) = request(port, "GET", "/readyz", None) {
            return;
        }
        if let Ok((200, _)) = request(port, "GET", "/healthz", None)
            && let Ok((status, v)) = request(port, "POST", "/v1/transfers", Some(&json!({})))
            && status == 503
        {
            // Before it is ready, a route that moves money says so.
            assert_eq!(v["code"], "not_ready", "{v}");
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "vigil serve exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "API not up in time:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// tx_id → (from, to, minor units).
type Transfers = BTreeMap<String, (usize, usize, i64)>;

fn acct(i: usize) -> String {
    format!("acct-{i}")
}

#[test]
fn acknowledged_transfers_survive_sigkill() {
    let dir = TempDir::new("ledger-crash");
    let journal = dir.join("ledger.journal");
    let log = dir.join("serve.log");
    let port = free_port();
    let mut child = serve(port, &journal, &log);
    wait_ready(port, &mut child, &log);
    for i in 0..ACCOUNTS {
        let (st, v) = request(
            port,
            "POST",
            "/v1/accounts",
            Some(&json!({"id": acct(i), "currency": "EUR"})),
        )
        .unwrap();
        assert_eq!(st, 201, "{v}");
        let (st, v) = request(
            port,
            "POST",
            &format!("/v1/accounts/{}/deposits", acct(i)),
            Some(&json!({"op_id": format!("dep-{i}"), "amount": "10000.00"})),
        )
        .unwrap();
        assert_eq!(st, 201, "{v}");
    }

    // Load: 6 clients, each sending transfers until the server dies.
    let acked: Arc<Mutex<Transfers>> = Arc::default();
    let attempted: Arc<Mutex<Transfers>> = Arc::default();
    let dead = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (acked, attempted, dead) = (acked.clone(), attempted.clone(), dead.clone());
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !dead.load(Ordering::Relaxed) {
                    n += 1;
                    let from = (c + n) % ACCOUNTS;
                    let to = (from + 1 + n % (ACCOUNTS - 1)) % ACCOUNTS;
                    let minor = 100 + (n as i64 * 37) % 900; // 1.00–9.99
                    let id = format!("c{c}-{n}");
                    attempted.lock().unwrap().insert(id.clone(), (from, to, minor));
                    let body = json!({"tx_id": id, "account_id": acct(from), "counterparty_id": acct(to),
                        "amount": format!("{}.{:02}", minor / 100, minor % 100), "currency": "EUR",
                        "device_id": format!("dev-{from}")});
                    match request(port, "POST", "/v1/transfers", Some(&body)) {
                        Ok((201, v)) => {
                            assert_eq!(v["transfer"]["tx_id"], id.as_str(), "{v}");
                            acked.lock().unwrap().insert(id, (from, to, minor));
                        }
                        Ok((st, v)) => panic!("transfer {id}: {st} {v}"),
                        Err(_) => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    // Kill in the middle of the load.
    let start = Instant::now();
    while acked.lock().unwrap().len() < 300 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    dead.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = attempted.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} transfers acknowledged before the kill",
        acked.len()
    );

    // Restart from the journal.
    let log2 = dir.join("serve2.log");
    let mut child = serve(port, &journal, &log2);
    wait_ready(port, &mut child, &log2);
    let restart_log = std::fs::read_to_string(&log2).unwrap_or_default();
    assert!(restart_log.contains("records replayed"), "{restart_log}");

    let mut expected: HashMap<usize, i64> = (0..ACCOUNTS).map(|i| (i, DEPOSIT_MINOR)).collect();
    let mut held: HashMap<usize, i64> = (0..ACCOUNTS).map(|i| (i, 0)).collect();
    let mut present = 0;
    for (id, (from, to, minor)) in &attempted {
        let (st, v) = request(port, "GET", &format!("/v1/transfers/{id}"), None).unwrap();
        if acked.contains_key(id) {
            assert_eq!(st, 200, "acknowledged transfer {id} lost: {v}");
        }
        if st == 404 {
            continue; // never acknowledged, never applied
        }
        assert_eq!(st, 200, "{v}");
        present += 1;
        assert_eq!(v["from"], acct(*from));
        assert_eq!(v["to"], acct(*to));
        if v["status"] == "settled" {
            *expected.get_mut(from).unwrap() -= minor;
            *expected.get_mut(to).unwrap() += minor;
        }
        if v["status"] == "pending" {
            // Held for review or step-up: off available, onto held.
            *expected.get_mut(from).unwrap() -= minor;
            *held.get_mut(from).unwrap() += minor;
        }
        // A retry of an applied transfer returns it and moves nothing again.
        let body = json!({"tx_id": id, "account_id": acct(*from), "counterparty_id": acct(*to),
            "amount": format!("{}.{:02}", minor / 100, minor % 100), "currency": "EUR", "device_id": format!("dev-{from}")});
        let (st, v) = request(port, "POST", "/v1/transfers", Some(&body)).unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["replayed"], true);
    }
    assert!(present >= acked.len());
    // Every balance is exactly what the transfers that are present add up to: nothing
    // half-applied, and the total is what was deposited.
    let mut total = 0;
    for i in 0..ACCOUNTS {
        let (st, v) = request(port, "GET", &format!("/v1/accounts/{}", acct(i)), None).unwrap();
        assert_eq!(st, 200, "{v}");
        let minor = |s: &Value| -> i64 { s.as_str().unwrap().replace('.', "").parse().unwrap() };
        let available = minor(&v["available"]);
        assert_eq!(available, expected[&i], "account {i} available");
        assert_eq!(minor(&v["held"]), held[&i], "account {i} held");
        total += available + held[&i];
    }
    assert_eq!(total, DEPOSIT_MINOR * ACCOUNTS as i64);
    child.kill().unwrap();
    let _ = child.wait();
}

#[test]
fn a_connection_that_stops_mid_headers_is_closed_after_the_idle_limit() {
    let dir = TempDir::new("idle-limit");
    let log = dir.join("serve.log");
    let config = dir.join("vigil.toml");
    std::fs::write(
        &config,
        "[api]\nrequest_timeout = \"500ms\"\nidle_timeout = \"1s\"\n",
    )
    .unwrap();
    let port = free_port();
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["serve", "--http", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config)
            .env(
                "VIGIL_API_TOKENS",
                format!("loadgen:payment_service:{TOKEN}"),
            )
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_ready(port, &mut child, &log);
    // Headers begun, never ended: the server closes the connection once it has been quiet
    // for the limit (it held it for ever before).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(
        n,
        0,
        "answered instead: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(waited < Duration::from_secs(15), "closed after {waited:?}");
    // A complete request is answered as before.
    assert_eq!(request(port, "GET", "/healthz", None).unwrap().0, 200);
}
