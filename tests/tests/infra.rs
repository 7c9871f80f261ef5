//! The deployment files of infra/ — Dockerfile, compose.yaml, Kubernetes manifests, the
//! example production configuration — cannot run here: there is no container engine and
//! no cluster. So each is checked as far as this machine can: it parses; every `baton`
//! command it runs is one `baton` accepts, checked by `serve --check-config` against the
//! files the container would see; the objects refer to each other consistently (ports,
//! labels, volumes, Secrets); and the Kubernetes pod, laid out as its manifests say,
//! really starts and answers its probes.

// Test code: a failed step should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use baton_issuer::config::Config;
use baton_tests::{RedisServer, Run, baton_bin, baton_command, https_client, without_baton_env};
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every YAML document of a file.
fn yaml(rel: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// The Kubernetes objects of infra/k8s, by kind (and the files they came from).
fn k8s_objects() -> Vec<(String, Yaml)> {
    let mut objects = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("infra/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for doc in yaml(&format!("infra/k8s/{name}")) {
            objects.push((name.clone(), doc));
        }
    }
    objects
}

fn one<'a>(objects: &'a [(String, Yaml)], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = objects
        .iter()
        .map(|(_, o)| o)
        .filter(|o| {
            o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn strings(list: &Yaml) -> Vec<String> {
    list.as_vec()
        .unwrap_or_else(|| panic!("not a list: {list:?}"))
        .iter()
        .map(|v| match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

fn run(cmd: &mut Command) -> Run {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
        .into()
}

fn baton(args: &[&str], env: &[(&str, &str)]) -> Run {
    run(baton_command().args(args).envs(env.iter().copied()))
}

/// A 0600 KEK file and a seed data directory sealed under it.
fn seed_with_kek(dir: &Path) -> (PathBuf, PathBuf) {
    let kek = dir.join("kek");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&kek, [7u8; 32]).unwrap();
    std::fs::set_permissions(&kek, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let seed = dir.join("seed");
    baton(
        &[
            "--data-dir",
            seed.to_str().unwrap(),
            "init",
            "--trust-domain",
            "example.org",
        ],
        &[("BATON_KEK_FILE", kek.to_str().unwrap())],
    )
    .ok();
    (kek, seed)
}

#[test]
fn the_production_example_config_sets_every_key_and_checks_clean() {
    let text = read("infra/config/baton.toml");
    for key in Config::keys() {
        // Off unless set, so shown commented out.
        let shown = if *key == "http_listen" {
            "# http_listen = "
        } else {
            ""
        };
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{key} = "))
                || (!shown.is_empty() && l.starts_with(shown))),
            "infra/config/baton.toml does not set `{key}`"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (kek, seed) = seed_with_kek(tmp.path());
    let policy = repo().join("infra/config/policy.toml");
    let config = repo().join("infra/config/baton.toml");
    let check = |env: &[(&str, &str)]| {
        let mut all = vec![("BATON_KEK_FILE", kek.to_str().unwrap())];
        all.extend_from_slice(env);
        baton(
            &[
                "--data-dir",
                seed.to_str().unwrap(),
                "serve",
                "--check-config",
                "--config",
                config.to_str().unwrap(),
                "--policy",
                policy.to_str().unwrap(),
            ],
            &all,
        )
    };
    let out = check(&[]);
    let printed = out.ok();
    assert!(printed.contains("policy"), "{printed}");
    // What it prints is the file's settings (the policy flag aside).
    let mut from_file = Config::from_toml(&text, Vec::new()).unwrap();
    from_file.policy = Some(policy.clone());
    let body: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(Config::from_toml(&body, Vec::new()).unwrap(), from_file);

    // A bad override names the key and the variable; nothing starts.
    let bad = check(&[("BATON_RATE_LIMIT", "0")]);
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("rate_limit"), "{}", bad.stderr);
    let bad = check(&[("BATON_TOKEN_TTL", "soon")]);
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("BATON_TOKEN_TTL"), "{}", bad.stderr);
    // A misspelt one is reported, not silently dropped.
    let typo = check(&[("BATON_TOKEN_TL", "30s")]);
    assert!(
        typo.ok().contains("BATON_TOKEN_TL is not a Baton setting"),
        "{}",
        typo.stdout
    );
    // The wrong KEK is named as such.
    let other = tmp.path().join("other-kek");
    std::fs::write(&other, [8u8; 32]).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let wrong = check(&[("BATON_KEK_FILE", other.to_str().unwrap())]);
    assert_eq!(wrong.code, Some(1));
    assert!(
        wrong.stderr.contains("key-encryption key"),
        "{}",
        wrong.stderr
    );
}

/// The instructions of a Dockerfile, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("infra/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

#[test]
fn the_dockerfile_builds_what_exists_and_runs_unprivileged_from_scratch() {
    let lines = dockerfile();
    let stages: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 3, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"), "{}", stages[0]);
    // The default target (the last stage) is the issuer, on nothing but its files.
    assert_eq!(stages[2].as_str(), "FROM scratch AS issuer");
    let issuer_stage: Vec<&String> = lines
        .iter()
        .skip_while(|l| !l.starts_with("FROM scratch"))
        .collect();
    assert!(issuer_stage.iter().any(|l| *l == "USER 65532:65532"));
    assert!(
        !issuer_stage.iter().any(|l| l.starts_with("RUN ")),
        "no RUN in a scratch stage"
    );
    assert!(
        lines.iter().filter(|l| *l == "USER 65532:65532").count() >= 2,
        "the demo stage too"
    );

    // Every file copied from the build context exists; the build copies the binaries
    // the later stages use.
    for line in lines
        .iter()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY {src}: no such file");
        }
    }
    let build = lines
        .iter()
        .find(|l| l.contains("cargo build --release --locked --target \"$target\" --bin baton"))
        .expect("the issuer build");
    assert!(
        build.contains("--example payments --example orders"),
        "{build}"
    );
    for example in ["payments", "orders"] {
        assert!(
            repo()
                .join(format!("client-sdk/examples/{example}.rs"))
                .is_file()
        );
    }
    assert!(lines.contains(&"ENTRYPOINT [\"/usr/local/bin/baton\"]".to_owned()));
    assert!(lines.contains(&"COPY --from=build /out/bin/baton /usr/local/bin/baton".to_owned()));
    assert!(lines.contains(&"CMD [\"serve\"]".to_owned()));
    let ignore = read(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == "target/"),
        "the build context must not carry target/"
    );

    // The image's environment, as `docker run baton init …` then `docker run baton`
    // (the default command) would use it, with its volume at a temporary path.
    let env_line = issuer_stage.iter().find(|l| l.starts_with("ENV ")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let volume = tmp.path().join("var/lib/baton");
    std::fs::create_dir_all(&volume).unwrap();
    let mut env: Vec<(String, String)> = env_line["ENV ".len()..]
        .split_whitespace()
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            let v = v.replace("/var/lib/baton", volume.to_str().unwrap());
            (k.to_owned(), v)
        })
        .collect();
    env.retain(|(k, _)| k.starts_with("BATON_"));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert!(
        env.iter()
            .any(|(k, v)| *k == "BATON_LISTEN" && *v == "0.0.0.0:8443")
    );
    baton(
        &["init", "--trust-domain", "example.org", "--if-missing"],
        &env,
    )
    .ok();
    baton(
        &["init", "--trust-domain", "example.org", "--if-missing"],
        &env,
    )
    .ok();
    let checked = baton(&["serve", "--check-config"], &env);
    let out = checked.ok();
    assert!(out.contains("listen = \"0.0.0.0:8443\""), "{out}");
    assert!(out.contains("log_format = \"json\""), "{out}");
    assert!(volume.join("data/bundle.pem").is_file());
}

/// Starts `redis-server <args>` on a free loopback port in a scratch directory and
/// returns what `CONFIG GET` says of the settings that matter to Baton.
fn redis_with_args(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new("redis-server")
        .args(args)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (the Debian package) is needed");
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while cli(&["PING"]) != "PONG" {
        assert!(
            Instant::now() < deadline,
            "redis-server {args:?} did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let settings = ["appendonly", "appendfsync", "maxmemory-policy"]
        .map(|key| cli(&["CONFIG", "GET", key]))
        .join("\n");
    let _ = child.kill();
    let _ = child.wait();
    settings
}

#[test]
fn compose_runs_the_seed_job_and_issuer_commands_baton_accepts() {
    let docs = yaml("infra/compose.yaml");
    assert_eq!(docs.len(), 1);
    let services = &docs[0]["services"];
    let names: Vec<&str> = services
        .as_hash()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(names, ["redis", "seed", "baton", "payments", "orders"]);
    let issuer = &services["baton"];
    assert_eq!(
        issuer["deploy"]["replicas"].as_i64(),
        Some(2),
        "two issuer replicas"
    );
    // Every service is hardened (through a YAML merge key): read-only, no capabilities.
    for name in &names {
        let hardening = &services[*name]["<<"];
        assert_eq!(hardening["read_only"].as_bool(), Some(true), "{name}");
        assert_eq!(strings(&hardening["cap_drop"]), ["ALL"], "{name}");
    }

    // Redis: AOF on, no eviction — the flags as a real redis-server takes them.
    let redis_args = strings(&services["redis"]["command"]);
    assert_eq!(redis_args[0], "redis-server");
    let settings = redis_with_args(&redis_args[1..]);
    assert!(settings.contains("appendonly\nyes"), "{settings}");
    assert!(settings.contains("appendfsync\nalways"), "{settings}");
    assert!(
        settings.contains("maxmemory-policy\nnoeviction"),
        "{settings}"
    );

    // The seed job, with its two volumes at temporary paths.
    let tmp = tempfile::tempdir().unwrap();
    let (seed, fn_dir) = (tmp.path().join("seed"), tmp.path().join("fn"));
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::create_dir_all(&fn_dir).unwrap();
    assert_eq!(strings(&services["seed"]["command"]), ["baton-demo-seed"]);
    let path = format!(
        "{}:{}",
        baton_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for _ in 0..2 {
        // Twice: `docker compose up` runs it at every start.
        run(without_baton_env(Command::new("sh"))
            .arg(repo().join("infra/demo/seed.sh"))
            .env("PATH", &path)
            .env("DEMO_SEED_DIR", &seed)
            .env("DEMO_FN_DIR", &fn_dir))
        .ok();
    }
    for file in [
        "bundle.pem",
        "orders/svid.pem",
        "orders/svid.key",
        "payments/svid.pem",
    ] {
        assert!(fn_dir.join(file).is_file(), "{file}");
    }
    assert!(!fn_dir.join("kek").exists() && !fn_dir.join("ca.key.sealed").exists());

    // Each replica's command, with its volumes mapped, checked as `serve` would run it.
    let mut args = strings(&issuer["command"]);
    let mounts = strings(&issuer["volumes"]);
    assert!(mounts.contains(&"seed:/seed:ro".to_owned()), "{mounts:?}");
    assert!(
        mounts
            .iter()
            .any(|m| m.starts_with("./config/policy.toml:/etc/baton/policy.toml"))
    );
    let data = tmp.path().join("replica/data");
    for arg in &mut args {
        *arg = arg
            .replace("/seed/", &format!("{}/", seed.display()))
            .replace(
                "/etc/baton/policy.toml",
                repo().join("infra/config/policy.toml").to_str().unwrap(),
            );
    }
    args.push("--check-config".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = baton(&args, &[("BATON_DATA_DIR", data.to_str().unwrap())]);
    let printed = out.ok();
    assert!(
        printed.contains("issuer_url = \"https://baton:8443\""),
        "{printed}"
    );
    assert!(
        printed.contains("store = \"redis://redis:6379/0\""),
        "{printed}"
    );

    // The demo functions are the SDK's examples, built into the demo image.
    assert_eq!(strings(&services["payments"]["command"])[0], "payments");
    assert_eq!(strings(&services["orders"]["command"])[0], "orders");
    assert!(strings(&services["orders"]["command"]).contains(&"/fn/orders/svid.key".to_owned()));
    // Functions never mount the seed (the CA key and the dev KEK live there).
    for function in ["payments", "orders"] {
        assert_eq!(strings(&services[function]["volumes"]), ["fn:/fn:ro"]);
    }
}

#[test]
fn the_kubernetes_objects_agree_with_each_other() {
    let objects = k8s_objects();
    // The kustomization lists every manifest but the Secrets' example.
    let kustomization = &objects
        .iter()
        .find(|(f, _)| f == "kustomization.yaml")
        .unwrap()
        .1;
    let mut listed = strings(&kustomization["resources"]);
    listed.sort();
    let mut files: Vec<String> = objects
        .iter()
        .map(|(f, _)| f.clone())
        .filter(|f| f != "kustomization.yaml" && f != "secrets.example.yaml")
        .collect();
    files.dedup();
    assert_eq!(listed, files);
    for (file, object) in &objects {
        if file == "kustomization.yaml" {
            continue;
        }
        assert!(
            object["apiVersion"].as_str().is_some(),
            "{file}: apiVersion"
        );
        assert!(
            object["metadata"]["name"].as_str().is_some(),
            "{file}: metadata.name"
        );
        if object["kind"].as_str() != Some("Namespace") {
            assert_eq!(
                object["metadata"]["namespace"].as_str(),
                Some("baton"),
                "{file}"
            );
        }
    }

    let deployment = one(&objects, "Deployment", "baton");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port = &container["ports"][0];
    assert_eq!(port["name"].as_str(), Some("https"));
    let container_port = port["containerPort"].as_i64().unwrap();
    // Probes: liveness on /healthz, readiness on /readyz, over HTTPS on that port.
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(get["scheme"].as_str(), Some("HTTPS"), "{probe}");
        assert_eq!(get["port"].as_str(), Some("https"), "{probe}");
    }
    assert!(container["resources"]["requests"]["cpu"].as_str().is_some());
    assert!(
        container["resources"]["requests"]["memory"]
            .as_str()
            .is_some()
    );
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["enableServiceLinks"].as_bool(),
        Some(false),
        "no BATON_* service links"
    );
    assert!(deployment["spec"]["replicas"].as_i64().unwrap() >= 2);

    // The Service, the PodDisruptionBudget and the NetworkPolicy select these pods,
    // and name their port.
    let app = labels["app.kubernetes.io/name"].as_str().unwrap();
    let service = one(&objects, "Service", "baton");
    assert_eq!(
        service["spec"]["selector"]["app.kubernetes.io/name"].as_str(),
        Some(app)
    );
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("https")
    );
    let pdb = one(&objects, "PodDisruptionBudget", "baton");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some(app)
    );
    assert!(pdb["spec"]["minAvailable"].as_i64().unwrap() >= 1);
    let netpol = one(&objects, "NetworkPolicy", "baton");
    assert_eq!(
        netpol["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some(app)
    );
    assert_eq!(
        strings(&netpol["spec"]["policyTypes"]),
        ["Ingress", "Egress"]
    );
    assert_eq!(
        netpol["spec"]["ingress"][0]["ports"][0]["port"].as_i64(),
        Some(container_port)
    );

    // The configuration listens where the container port is, and its issuer URL is
    // the Service's name.
    let configmap = one(&objects, "ConfigMap", "baton-config");
    let config = Config::from_toml(
        configmap["data"]["config.toml"].as_str().unwrap(),
        Vec::new(),
    )
    .unwrap();
    assert_eq!(i64::from(config.listen.port()), container_port);
    assert_eq!(config.issuer(), "https://baton.baton.svc");
    assert_eq!(service["spec"]["ports"][0]["port"].as_i64(), Some(443));

    // Every Secret the pod reads has its shape in the example, and the KEK is mounted
    // readable by the pod's group only.
    for name in ["baton-kek", "baton-ca", "baton-redis"] {
        one(&objects, "Secret", name);
    }
    let volumes = pod["volumes"].as_vec().unwrap();
    let kek = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("kek"))
        .unwrap();
    assert_eq!(kek["secret"]["defaultMode"].as_i64(), Some(0o440));
    let seed = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("seed"))
        .unwrap();
    assert_eq!(seed["secret"]["defaultMode"].as_i64(), Some(0o440));
}

/// The pod as its manifests lay it out, under `root`: each volume's files at its mount
/// path (ConfigMap keys, the Secrets from a real trust domain, an empty emptyDir).
struct Pod {
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: PathBuf,
}

fn lay_out_pod(root: &Path, redis_url: &str) -> Pod {
    let objects = k8s_objects();
    let deployment = one(&objects, "Deployment", "baton");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let (kek, seed) = seed_with_kek(&root.join("operator"));
    let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
    for mount in container["volumeMounts"].as_vec().unwrap() {
        let name = mount["name"].as_str().unwrap();
        let path = mount["mountPath"].as_str().unwrap();
        let at = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&at).unwrap();
        let volume = pod["volumes"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("volume {name} is mounted but not defined"));
        if let Some(map) = volume["configMap"]["name"].as_str() {
            let data = &one(&objects, "ConfigMap", map)["data"];
            for (key, value) in data.as_hash().unwrap() {
                std::fs::write(at.join(key.as_str().unwrap()), value.as_str().unwrap()).unwrap();
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            // What `kubectl create secret … --from-file` (README.md) puts in each.
            let files: Vec<(&str, PathBuf)> = match secret {
                "baton-kek" => vec![("kek", kek.clone())],
                "baton-ca" => vec![
                    ("bundle.pem", seed.join("bundle.pem")),
                    ("ca.key.sealed", seed.join("ca.key.sealed")),
                ],
                other => panic!("unexpected Secret volume {other}"),
            };
            for (key, from) in files {
                std::fs::copy(&from, at.join(key)).unwrap();
                // Root-owned 0440 is what the kubelet makes; this test may run as root,
                // for whom the owner's own rule (0600) applies.
                std::fs::set_permissions(
                    at.join(key),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )
                .unwrap();
            }
        } else {
            assert!(volume["emptyDir"].as_hash().is_some(), "volume {name}");
        }
        mounts.insert(path.to_owned(), at);
    }
    let map = |value: &str| {
        mounts
            .iter()
            .find(|(path, _)| value.starts_with(path.as_str()))
            .map_or(value.to_owned(), |(path, at)| {
                format!("{}{}", at.display(), &value[path.len()..])
            })
    };
    // Paths inside the configuration (the policy file) point into the pod too.
    for at in mounts.values() {
        for entry in std::fs::read_dir(at).unwrap() {
            let file = entry.unwrap().path();
            if file.extension().is_some_and(|x| x == "toml") {
                let mut text = std::fs::read_to_string(&file).unwrap();
                for (path, path_at) in &mounts {
                    text =
                        text.replace(&format!("\"{path}/"), &format!("\"{}/", path_at.display()));
                }
                std::fs::write(&file, text).unwrap();
            }
        }
    }
    let args = strings(&container["args"]).iter().map(|a| map(a)).collect();
    let mut env = Vec::new();
    for var in container["env"].as_vec().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match var["value"].as_str() {
            Some(value) => map(value),
            None => {
                assert_eq!(
                    var["valueFrom"]["secretKeyRef"]["name"].as_str(),
                    Some("baton-redis")
                );
                redis_url.to_owned()
            }
        };
        env.push((name, value));
    }
    let data_dir = PathBuf::from(&env.iter().find(|(k, _)| k == "BATON_DATA_DIR").unwrap().1);
    Pod {
        args,
        env,
        data_dir,
    }
}

#[tokio::test]
async fn the_kubernetes_pod_starts_from_its_manifests_and_answers_its_probes() {
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let pod = lay_out_pod(tmp.path(), &redis.url());
    let env: Vec<(&str, &str)> = pod
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let args: Vec<&str> = pod.args.iter().map(String::as_str).collect();

    let mut check = args.clone();
    check.push("--check-config");
    let printed = baton(&check, &env);
    let printed = printed.ok();
    assert!(printed.contains("# policy"), "{printed}");
    assert!(!printed.contains("not a Baton setting"), "{printed}");
    assert!(!pod.data_dir.exists(), "--check-config changes nothing");

    // Now for real: the same command, on a free loopback port instead of 0.0.0.0:8443.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = baton_command();
    cmd.args(&args)
        .envs(env.iter().copied())
        .env("BATON_LISTEN", &listen);
    let log = tmp.path().join("issuer.log");
    cmd.stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let guard = Kill(&mut child);

    let bundle = std::fs::read_to_string(tmp.path().join("operator/seed/bundle.pem")).unwrap();
    let client = https_client(&bundle, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answers = (0, 0);
    while Instant::now() < deadline {
        let status = |path: &'static str| {
            let client = client.clone();
            let url = format!("https://{listen}{path}");
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        };
        answers = (status("/healthz").await, status("/readyz").await);
        if answers == (200, 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        answers,
        (200, 200),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // The data directory was made in the emptyDir, from the seed Secret.
    assert!(pod.data_dir.join("bundle.pem").is_file());
    assert!(pod.data_dir.join("admin.sock").exists());
    // The server certificate names the Service the issuer URL points at.
    let metadata = client
        .get(format!(
            "https://{listen}/.well-known/oauth-authorization-server"
        ))
        .send()
        .await
        .unwrap();
    let metadata: serde_json::Value = metadata.json().await.unwrap();
    assert_eq!(metadata["issuer"], "https://baton.baton.svc");
    drop(guard);
}

/// The subcommands `baton <path…> --help` lists under "Commands:".
fn subcommands(path: &[&str]) -> Vec<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let help = baton(&args, &[]);
    help.ok()
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter(|l| l.as_bytes().get(2).is_some_and(|b| b.is_ascii_lowercase()))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn every_baton_command_the_deployment_files_name_is_one_baton_accepts() {
    let files = [
        "infra/k8s/README.md",
        "infra/k8s/configmap.yaml",
        "infra/k8s/secrets.example.yaml",
        "infra/compose.yaml",
        "infra/demo/seed.sh",
        "infra/config/baton.toml",
    ];
    let mut checked = 0;
    let top = subcommands(&[]);
    for file in files {
        for line in read(file).lines() {
            // `baton …` as a shell line, after `kubectl exec … --`, or in a comment.
            let Some(at) = line.match_indices("baton ").map(|(i, _)| i).find(|&i| {
                let before = &line[..i];
                before.trim_end().is_empty()
                    || before.ends_with("-- ")
                    || before.ends_with("# ")
                    || before.trim_end().ends_with('#')
                    || before
                        .split_whitespace()
                        .last()
                        .is_some_and(|w| w.contains('='))
            }) else {
                continue;
            };
            let words: Vec<&str> = line[at + "baton ".len()..]
                .split_whitespace()
                .take_while(|w| !w.starts_with('#') && *w != "\\" && *w != "|" && *w != ">")
                .collect();
            // Skip the global --data-dir and its value.
            let mut words = words.as_slice();
            if words.first() == Some(&"--data-dir") {
                words = &words[2.min(words.len())..];
            }
            let Some(first) = words.first() else { continue };
            if !top.contains(&first.to_string()) {
                // Prose ("baton serve" is checked; "Baton issuer" is not a command).
                continue;
            }
            let mut path = vec![*first];
            for word in &words[1..] {
                if subcommands(&path).contains(&word.to_string()) {
                    path.push(word);
                } else {
                    break;
                }
            }
            let mut args = path.clone();
            args.push("--help");
            let help = baton(&args, &[]);
            let help = help.ok();
            for flag in words.iter().filter(|w| w.starts_with("--")) {
                let flag = flag.split('=').next().unwrap();
                assert!(
                    help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
                    "{file}: `baton {}` has no flag {flag}",
                    path.join(" ")
                );
            }
            checked += 1;
            eprintln!("{file}: baton {}", words.join(" "));
        }
    }
    // The kubectl exec lines, the secrets' init, compose's seed job, the config check.
    assert!(checked >= 10, "only {checked} baton commands found");
}
