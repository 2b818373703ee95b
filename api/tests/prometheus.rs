//! A real Prometheus server scrapes a running `vigil serve` with the shipped alert rules, and an
//! analyst's broken rule file makes `VigilRuleReloadFailed` go off.
//!
//! Needs the `prometheus` binary (Debian's `prometheus` package, which `.ci/run` installs). Without
//! it the test says so and passes, unless `VIGIL_REQUIRE_PROMETHEUS=1` (as in `.ci/run`).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vigil_tests::{copy_dir, root};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The body of `GET path` on `addr`, if it answers 200.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// Kills the processes and removes the directory at the end, whatever happens.
struct Cleanup {
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, log: &Path) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "{what} within {limit:?}; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn prometheus_scrapes_vigil_and_a_refused_reload_sets_off_its_alert() {
    let found = Command::new("prometheus")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("VIGIL_REQUIRE_PROMETHEUS").is_none(),
            "VIGIL_REQUIRE_PROMETHEUS is set but there is no prometheus binary"
        );
        eprintln!("skipped: no prometheus binary (apt-get install prometheus)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vigil-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rules = dir.join("rules");
    copy_dir(&root().join("rules/packs/default"), &rules);
    let mut cleanup = Cleanup {
        children: Vec::new(),
        dir: dir.clone(),
    };

    let vigil_addr = format!("127.0.0.1:{}", free_port());
    let vigil_log = dir.join("vigil.log");
    cleanup.children.push(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["serve", "--http", &vigil_addr, "--rules"])
            .arg(&rules)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&vigil_log).expect("log"))
            .spawn()
            .expect("start vigil serve"),
    );
    wait_for(
        "vigil serve answers /metrics",
        Duration::from_secs(60),
        || get(&vigil_addr, "/metrics").is_some(),
        &vigil_log,
    );

    let prom_addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: ['{vigil_addr}']\n",
            root().join("ops/prometheus/alerts.yml").display()
        ),
    )
    .expect("prometheus.yml");
    let prom_log = dir.join("prometheus.log");
    cleanup.children.push(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    // Scraped, and the alert rules loaded and quiet.
    wait_for(
        "prometheus scrapes vigil",
        Duration::from_secs(60),
        || {
            get(&prom_addr, "/api/v1/query?query=vigil_rules_active_rules")
                .is_some_and(|b| b.contains("\"vigil_rules_active_rules\""))
        },
        &prom_log,
    );
    let rules_loaded = get(&prom_addr, "/api/v1/rules").unwrap_or_default();
    assert!(
        rules_loaded.contains("VigilRuleReloadFailed"),
        "{rules_loaded}"
    );
    let alerts = get(&prom_addr, "/api/v1/alerts").unwrap_or_default();
    assert!(!alerts.contains("VigilRuleReloadFailed"), "{alerts}");

    // An analyst saves a broken rule file: the watcher refuses it, the counter moves, the
    // alert goes off.
    let file = rules.join("amount.toml");
    let text = std::fs::read_to_string(&file).expect("amount.toml");
    std::fs::write(&file, text.replacen("amount > 200", "amount >> 200", 1)).expect("write");
    wait_for(
        "VigilRuleReloadFailed pending or firing",
        Duration::from_secs(60),
        || {
            get(&prom_addr, "/api/v1/alerts").is_some_and(|b| {
                b.contains("\"alertname\":\"VigilRuleReloadFailed\"")
                    && (b.contains("\"state\":\"pending\"") || b.contains("\"state\":\"firing\""))
            })
        },
        &vigil_log,
    );
    let metrics = get(&vigil_addr, "/metrics").unwrap_or_default();
    assert!(
        metrics.contains("vigil_rules_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    // SIGHUP asks for a reload (here refused again, the file still broken) and does not end
    // the process, as the signal's default action would.
    let pid = cleanup.children[0].id().to_string();
    let sent = Command::new("kill").args(["-HUP", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -HUP {pid}");
    wait_for(
        "a second refused reload, after SIGHUP",
        Duration::from_secs(30),
        || {
            get(&vigil_addr, "/metrics")
                .is_some_and(|m| m.contains("vigil_rules_reloads_total{result=\"failed\"} 2"))
        },
        &vigil_log,
    );
    assert!(
        cleanup.children[0].try_wait().is_ok_and(|s| s.is_none()),
        "vigil serve ended on SIGHUP"
    );
    drop(cleanup);
}
