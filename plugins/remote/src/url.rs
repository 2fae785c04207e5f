//! The `endpoints` config: URL parsing and the checks `new()` makes before anything connects.

/// What a pool's `endpoints` list names: one kind of backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// tmem peer hosts (one or more replicas), each `(address, pool)`.
    Peers(Vec<PeerUrl>),
    /// One Redis or Valkey server.
    Redis {
        /// `HOST:PORT`, exactly as written.
        addr: String,
        /// The key namespace (`tmem:NAMESPACE:OFFSET`).
        namespace: String,
    },
    /// A Redis Cluster: every listed node, and the namespace.
    Cluster {
        /// `HOST:PORT` of each node, exactly as written, in the order given.
        addrs: Vec<String>,
        /// The key namespace.
        namespace: String,
    },
}

/// One `tmem://HOST:PORT/POOL` replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUrl {
    /// `HOST:PORT`, exactly as written (the host grants addresses by their text).
    pub addr: String,
    /// The pool on the peer host.
    pub pool: String,
}

/// The longest pool name or namespace accepted.
const MAX_NAME: usize = 128;

/// Parses and checks a pool's `endpoints`.
pub fn parse_endpoints(endpoints: &[String]) -> Result<Target, String> {
    if endpoints.is_empty() {
        return Err(
            "`endpoints` is empty: give tmem://HOST:PORT/POOL URLs (replicas), or one redis://HOST:PORT/NAMESPACE \
                    or redis-cluster://HOST:PORT,HOST:PORT,.../NAMESPACE URL"
                .into(),
        );
    }
    let mut peers: Vec<PeerUrl> = Vec::new();
    let mut redis: Vec<Target> = Vec::new();
    for url in endpoints {
        match parse_url(url)? {
            Target::Peers(mut p) => {
                let p = p.pop().expect("one peer per URL");
                if peers.contains(&p) {
                    return Err(format!("endpoint {url:?} is listed twice"));
                }
                peers.push(p);
            }
            other => redis.push(other),
        }
    }
    match (peers.is_empty(), redis.len()) {
        (false, 0) => Ok(Target::Peers(peers)),
        (true, 1) => Ok(redis.pop().expect("one")),
        (true, _) => Err(format!(
            "`endpoints` lists {} redis URLs: give exactly one (redis:// for one server, redis-cluster:// listing every node of a cluster)",
            redis.len()
        )),
        (false, _) => {
            Err("`endpoints` mixes tmem:// and redis URLs: a pool's remote store is either tmem peer hosts or Redis"
                .into())
        }
    }
}

/// Parses one URL into a one-replica [`Target::Peers`] or a Redis target.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let bad = |why: &str| format!("endpoint {url:?}: {why}");
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad("not a URL; expected tmem://HOST:PORT/POOL, redis://HOST:PORT/NAMESPACE or redis-cluster://HOST:PORT,.../NAMESPACE")
    })?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    // `tmems`, `rediss` and `rediss-cluster` are the same protocols over TLS, which the host
    // makes when this plugin connects (its `network` capability): nothing differs here.
    let scheme = match scheme {
        "tmems" => "tmem",
        "rediss" => "redis",
        "rediss-cluster" => "redis-cluster",
        plain => plain,
    };
    let what = if scheme == "tmem" { "pool" } else { "namespace" };
    if path.is_empty() {
        return Err(bad(&format!("no {what}: add /{}", what.to_uppercase())));
    }
    if path.len() > MAX_NAME || !path.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(bad(&format!("{what} {path:?} must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.'")));
    }
    let mut addrs: Vec<String> = Vec::new();
    for addr in authority.split(',') {
        check_addr(addr).map_err(|why| bad(&why))?;
        if addrs.iter().any(|a| a == addr) {
            return Err(bad(&format!("{addr} is listed twice")));
        }
        addrs.push(addr.to_string());
    }
    let one = |addrs: Vec<String>| -> Result<String, String> {
        match <[String; 1]>::try_from(addrs) {
            Ok([addr]) => Ok(addr),
            Err(_) => Err(bad(&format!("{scheme}:// takes one HOST:PORT (list replicas as separate URLs)"))),
        }
    };
    match scheme {
        "tmem" => Ok(Target::Peers(vec![PeerUrl { addr: one(addrs)?, pool: path.to_string() }])),
        "redis" => Ok(Target::Redis { addr: one(addrs)?, namespace: path.to_string() }),
        "redis-cluster" => Ok(Target::Cluster { addrs, namespace: path.to_string() }),
        _ => Err(bad(&format!(
            "unknown scheme {scheme:?}; expected tmem, redis or redis-cluster (tmems, rediss, rediss-cluster over TLS)"
        ))),
    }
}

/// Checks `HOST:PORT` (the host grants connections to exactly this text).
fn check_addr(addr: &str) -> Result<(), String> {
    if addr.contains('@') {
        return Err("no user or password in the URL: put the Redis password or the tmem API token in `token`".into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not HOST:PORT"));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#')) {
        return Err(format!("{addr:?} is not HOST:PORT"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{addr:?}: the port must be a number from 1 to 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(urls: &[&str]) -> Result<Target, String> {
        parse_endpoints(&urls.iter().map(|u| u.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_three_forms_parse() {
        assert_eq!(
            parse(&["tmem://10.0.0.1:7001/pool-b", "tmem://mem2.local:7001/pool-b"]).unwrap(),
            Target::Peers(vec![
                PeerUrl { addr: "10.0.0.1:7001".into(), pool: "pool-b".into() },
                PeerUrl { addr: "mem2.local:7001".into(), pool: "pool-b".into() },
            ])
        );
        assert_eq!(
            parse(&["redis://127.0.0.1:6379/swap.a"]).unwrap(),
            Target::Redis { addr: "127.0.0.1:6379".into(), namespace: "swap.a".into() }
        );
        assert_eq!(
            parse(&["redis-cluster://10.0.0.1:7000,10.0.0.2:7000,[::1]:7002/ns"]).unwrap(),
            Target::Cluster {
                addrs: vec!["10.0.0.1:7000".into(), "10.0.0.2:7000".into(), "[::1]:7002".into()],
                namespace: "ns".into()
            }
        );
        // Over TLS (which the host makes): the same targets.
        assert_eq!(
            parse(&["tmems://10.0.0.1:7001/pool-b"]).unwrap(),
            Target::Peers(vec![PeerUrl { addr: "10.0.0.1:7001".into(), pool: "pool-b".into() }])
        );
        assert_eq!(
            parse(&["rediss://127.0.0.1:6380/swap.a"]).unwrap(),
            Target::Redis { addr: "127.0.0.1:6380".into(), namespace: "swap.a".into() }
        );
        assert!(matches!(parse(&["rediss-cluster://10.0.0.1:7000/ns"]).unwrap(), Target::Cluster { .. }));
        // The same server with two pools is two replicas.
        assert!(matches!(parse(&["tmem://a:1/p", "tmem://a:1/q"]).unwrap(), Target::Peers(p) if p.len() == 2));
    }

    #[test]
    fn bad_lists_and_urls_are_refused_with_a_reason() {
        let err = |urls: &[&str]| parse(urls).unwrap_err();
        assert!(err(&[]).contains("empty"));
        assert!(err(&["tmem://a:1/p", "redis://b:2/n"]).contains("mixes"));
        assert!(err(&["redis://a:1/n", "redis://b:2/n"]).contains("exactly one"));
        assert!(err(&["redis://a:1/n", "redis-cluster://b:2/n"]).contains("exactly one"));
        assert!(err(&["tmem://a:1"]).contains("no pool"));
        assert!(err(&["tmem://a:1/"]).contains("no pool"));
        assert!(err(&["redis://a:1"]).contains("no namespace"));
        assert!(err(&["redis-cluster://a:1,b:2/"]).contains("no namespace"));
        assert!(err(&["redis://a:1/n*"]).contains("letters, digits"));
        assert!(err(&["redis://a:1/{tag}"]).contains("letters, digits"));
        assert!(err(&["redis://a:1/x/y"]).contains("letters, digits"));
        assert!(err(&["a:1/p"]).contains("not a URL"));
        assert!(err(&["http://a:1/p"]).contains("unknown scheme"));
        assert!(err(&["tmem://a/p"]).contains("not HOST:PORT"));
        assert!(err(&["tmem://:1/p"]).contains("not HOST:PORT"));
        assert!(err(&["tmem://a:0/p"]).contains("port"));
        assert!(err(&["tmem://a:70000/p"]).contains("port"));
        assert!(err(&["tmem://a:1,b:2/p"]).contains("one HOST:PORT"));
        assert!(err(&["redis://a:1,b:2/n"]).contains("one HOST:PORT"));
        assert!(err(&["redis://:pw@a:1/n"]).contains("`token`"));
        assert!(err(&["redis-cluster://a:1,a:1/n"]).contains("twice"));
        assert!(err(&["tmem://a:1/p", "tmem://a:1/p"]).contains("twice"));
    }
}
