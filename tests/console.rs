//! The console on the admin listener: its files and headers, and the product's steps driven in a
//! real Chromium (tests/console/console_test.py, Selenium with Debian's chromedriver, axe-core
//! for accessibility). `.ci/run` installs the browser, the driver, Selenium and axe-core.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const TOKEN: &str = "console-admin-token-0123456789";

struct Console {
    gw: Gateway,
    admin: String,
}

fn start(nodes: &[&EchoServer]) -> Console {
    let (listen, metrics, admin) = (free_port(), free_port(), free_port());
    let gw = Gateway::start_config(
        &admin_yaml(listen, metrics, admin, TOKEN, nodes),
        listen,
        metrics,
    );
    Console {
        gw,
        admin: format!("http://127.0.0.1:{admin}"),
    }
}

/// A tool the browser test needs: from the environment variable, else the default, which must
/// exist (the message says how to install it).
fn tool(env: &str, default: impl AsRef<Path>, install: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.as_ref().to_owned());
    assert!(
        path.exists(),
        "the console test needs {} ({install}; or set {env})",
        path.display()
    );
    path
}

#[test]
fn the_console_files_are_public_with_a_strict_policy_and_the_api_is_not() {
    let node = echo("n1");
    let c = start(&[&node]);
    let page = request("GET", &format!("{}/ui/", c.admin), &[], None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert!(page.header("set-cookie").is_none());
    assert!(page
        .body
        .contains("<script src=\"console.js\" defer></script>"));
    let js = request("GET", &format!("{}/ui/console.js", c.admin), &[], None);
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(js.body.contains("Authorization"));

    let missing = request("GET", &format!("{}/ui/secrets.txt", c.admin), &[], None);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not_found");
    let post = request("POST", &format!("{}/ui/", c.admin), &[], Some("x"));
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
    // the files hold no data: the API behind them still wants the token
    let status = request("GET", &format!("{}/status", c.admin), &[], None);
    assert_eq!(status.status, 401);
    let upstreams = request("GET", &format!("{}/upstreams", c.admin), &[], None);
    assert_eq!(upstreams.status, 401);
    drop(c.gw);
}

#[test]
fn an_operator_runs_the_products_console_steps_in_a_real_browser() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = tool(
        "GATEHOUSE_TEST_PYTHON",
        repo.join("target/test-venv/bin/python"),
        "python3 -m venv target/test-venv && target/test-venv/bin/pip install selenium",
    );
    let chromium = tool(
        "GATEHOUSE_TEST_CHROMIUM",
        "/usr/bin/chromium",
        "apt-get install chromium",
    );
    let driver = tool(
        "GATEHOUSE_TEST_CHROMEDRIVER",
        "/usr/bin/chromedriver",
        "apt-get install chromium-driver",
    );
    let axe = tool(
        "GATEHOUSE_TEST_AXE",
        repo.join("target/axe/package/axe.min.js"),
        "cd target/axe && npm pack axe-core@4.10.2 && tar xzf axe-core-4.10.2.tgz package/axe.min.js",
    );
    let (n1, n2, existing) = (echo("orders-1"), echo("orders-2"), echo("users-1"));
    let c = start(&[&existing]);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new(python)
        .arg(repo.join("tests/console/console_test.py"))
        .env("GATEHOUSE_ADMIN", &c.admin)
        .env("GATEHOUSE_PROXY", &c.gw.base)
        .env("GATEHOUSE_TOKEN", TOKEN)
        .env("NODE1", n1.addr().to_string())
        .env("NODE2", n2.addr().to_string())
        .env("CHROMIUM", chromium)
        .env("CHROMEDRIVER", driver)
        .env("AXE", axe)
        .env("SCREENSHOTS", &shots)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "{text}\nscreenshots: {}\ngateway log:\n{}",
        shots.display(),
        c.gw.log()
    );
    assert!(text.contains("every step passed"), "{text}");
    // the API created in the browser reached a node, and the configuration is back as it was
    assert!(n1.stats().requests() + n2.stats().requests() >= 1);
    let config = std::fs::read_to_string(c.gw.dir.join("gatehouse.yaml")).unwrap();
    assert!(!config.contains("orders"), "{config}");
}
