//! Failures of the host itself, as the API answers them: a server failure is a 5xx whose body
//! names the kind of failure and nothing of the host's insides (no paths, no database or OS
//! error text), while the client's mistakes stay 4xx with their reasons. Every mapping is
//! unit-tested in `host/src/rest/error.rs`; these drive it end to end.

use serde_json::Value;
use tmem_api::rest::{BackendRequest, PoolConfig};
use tmem_host::persist::DiskError;
use tmem_host::{Host, HostConfig, HostError};

use crate::common::{ServeProcess, temp_dir};

fn persistent(name: &str) -> PoolConfig {
    PoolConfig::new(
        name,
        vec![
            BackendRequest::new("zstd"),
            BackendRequest { grants: vec!["storage".into()], ..BackendRequest::new("sled") },
        ],
    )
}

/// Makes `DATA_DIR/pools`, where every persistent pool's database directory goes, a file.
fn block_pools_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    let pools = data_dir.join("pools");
    let _ = std::fs::remove_dir_all(&pools);
    std::fs::write(&pools, b"not a directory").unwrap();
    pools
}

#[test]
fn a_pool_database_that_cannot_be_created_is_500_storage_error_and_the_body_names_no_path() {
    let server = ServeProcess::start(&temp_dir("errors-storage"), &[]);
    let client = server.client();
    let pools = block_pools_dir(&server.data_dir);

    let body = serde_json::to_vec(&persistent("p")).unwrap();
    let (status, response) = client.request("POST", "/api/v1/pools", Some(("application/json", &body)), true).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    assert_eq!(status, 500, "a server failure, not the client's mistake (it was 400 invalid_pool): {text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["error"]["code"], "storage_error", "{text}");
    assert_eq!(error["error"]["message"], "the pool's storage failed; see the host's log");
    let data_dir = server.data_dir.to_string_lossy().into_owned();
    for internal in [data_dir.as_str(), "tmem-test-errors-storage", "directory", "os error", "IO error", "sled"] {
        assert!(!text.contains(internal), "the body leaks {internal:?}: {text}");
    }
    // Nothing was created; the client's mistakes are still 400 with their reasons.
    assert_eq!(client.pool("p").unwrap_err().code(), Some("pool_not_found"));
    let bad = client.create_pool(&persistent("bad name")).unwrap_err();
    assert_eq!((bad.status(), bad.code()), (Some(400), Some("invalid_pool")), "{bad}");
    assert!(bad.to_string().contains("pool name"), "{bad}");
    let dry = client.check_pool(&persistent("p")).unwrap();
    assert!(dry.valid, "a dry run touches no disk");

    // Once the disk is usable again, the same request succeeds.
    std::fs::remove_file(&pools).unwrap();
    let created = client.create_pool(&persistent("p")).unwrap();
    assert!(created.persistent);
    client.remove_pool("p").unwrap();
}

#[test]
fn the_host_keeps_the_storage_failures_detail_for_its_log_and_nothing_of_the_pool() {
    let dir = temp_dir("errors-host");
    let config = || HostConfig {
        data_dir: Some(dir.clone()),
        engine: tmem_host::plugin::EngineOptions { max_instances: 50, ..Default::default() },
        ..Default::default()
    };
    {
        let host = Host::new(config()).unwrap();
        let pools = block_pools_dir(&dir);
        let err = host.create_pool_from(&persistent("p")).unwrap_err();
        assert!(matches!(err, HostError::Disk(DiskError::Open { .. })), "{err:?}");
        assert!(err.to_string().contains(&*pools.to_string_lossy()), "the log names the path: {err}");
        assert!(host.pool("p").is_err());
        // A pool that keeps its pages in memory does not need the disk.
        host.create_pool_from(&PoolConfig::new("m", vec![BackendRequest::new("ram")])).unwrap();
    }
    let host = Host::new(config()).unwrap();
    assert!(host.pool("p").is_err(), "the failed pool was never kept in the catalog");
    assert!(host.pool("m").is_ok());
}
