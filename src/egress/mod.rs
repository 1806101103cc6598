//! Where sources may connect: the egress policy of HTTP sources, `verify --upstream` and Git
//! remotes.
//!
//! A CVI (or a line in a catalog) names any URL, so without a policy the daemon copies
//! whatever the pod can reach into DVCR: the cloud metadata service, the kubelet, any pod's
//! port. The policy refuses link-local addresses (169.254.0.0/16, fe80::/10, where metadata
//! services live) by default; operators add `--source-deny` rules (CIDRs and host names) and
//! carve exceptions out of every deny rule, the defaults included, with `--source-allow`.
//!
//! [`EgressPolicy::check`] is the pure decision. The shells below apply it where the
//! addresses are known: [`PolicyResolver`] on every connection reqwest opens (after DNS, so a
//! name that re-resolves to a denied address on the next connection is refused then),
//! [`redirect_policy`] on every redirect hop (literal IPs never reach a resolver), and
//! [`check_resolved_blocking`] before libgit2 connects.

pub mod connect_proxy;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

/// Refused unless an allow rule says otherwise: the link-local ranges, where cloud metadata
/// services (169.254.169.254) answer without authentication. AWS's IPv6 endpoint
/// fd00:ec2::254 is unique-local, not link-local: deny it with a flag where it matters.
const DEFAULT_DENY: [&str; 2] = ["169.254.0.0/16", "fe80::/10"];

/// One `--source-deny` or `--source-allow` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// A CIDR or a single address. IPv4-mapped IPv6 ranges are kept as IPv4 ranges, so they
    /// match the same connections.
    Net(IpNet),
    /// A host name, lower case, without a trailing dot.
    Host(String),
    /// `*.example.com`: every name below `example.com` (not `example.com` itself).
    Suffix(String),
}

impl Rule {
    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, Rule::Net(net) if net.contains(&canonical_ip(ip)))
    }

    fn matches_host(&self, host: &str) -> bool {
        match self {
            Rule::Net(_) => false,
            Rule::Host(name) => name == host,
            Rule::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|prefix| prefix.ends_with('.') && prefix.len() > 1),
        }
    }

    fn matches(&self, host: Option<&str>, ip: Option<IpAddr>) -> bool {
        ip.is_some_and(|ip| self.matches_ip(ip)) || host.is_some_and(|host| self.matches_host(host))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Net(net) => write!(f, "{net}"),
            Rule::Host(name) => write!(f, "{name}"),
            Rule::Suffix(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err(
                "an empty rule; give a CIDR (10.0.0.0/8), an address or a host name".into(),
            );
        }
        if text.contains('/') {
            let net = IpNet::from_str(text).map_err(|_| {
                format!("{text:?} is not a CIDR; write it like 10.0.0.0/8 or fd00::/8")
            })?;
            return Ok(Rule::Net(canonical_net(net.trunc())));
        }
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(ip) = IpAddr::from_str(unbracketed) {
            return Ok(Rule::Net(canonical_net(IpNet::from(ip))));
        }
        let name = normalize_host(text);
        let (suffix, name) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest.to_string()),
            None => (false, name),
        };
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "{text:?} is neither a CIDR, an address nor a host name (a leading \"*.\" names \
                 every host below a domain)"
            ));
        }
        Ok(if suffix {
            Rule::Suffix(name)
        } else {
            Rule::Host(name)
        })
    }
}

/// Which rule refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeniedBy {
    /// One of the built-in link-local ranges.
    Default(Rule),
    /// A `--source-deny` rule.
    Flag(Rule),
}

/// A connection the policy refuses: names the host, the address and its class, the rule, and
/// the flag that opens it. Never holds a URL, so it carries no credentials or query strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refusal {
    pub host: Option<String>,
    pub ip: Option<IpAddr>,
    pub denied_by: DeniedBy,
}

impl Refusal {
    /// What kind of address it is, for people: "a link-local address (...)".
    pub fn address_class(&self) -> Option<&'static str> {
        self.ip.map(address_class)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match (&self.host, self.ip) {
            (Some(host), Some(ip)) => format!("{host} ({ip}, {})", address_class(ip)),
            (None, Some(ip)) => format!("{ip} ({})", address_class(ip)),
            (Some(host), None) => host.clone(),
            (None, None) => "the host".to_string(),
        };
        let why = match &self.denied_by {
            DeniedBy::Default(rule) => {
                format!("link-local addresses ({rule}) are refused by default")
            }
            DeniedBy::Flag(rule) => format!("it matches --source-deny {rule}"),
        };
        let open = match (&self.host, self.ip) {
            (Some(host), Some(ip)) => {
                format!("--source-allow {} (or --source-allow {host})", single(ip))
            }
            (None, Some(ip)) => format!("--source-allow {}", single(ip)),
            (Some(host), None) => format!("--source-allow {host}"),
            (None, None) => "--source-allow".to_string(),
        };
        write!(
            f,
            "the daemon's source egress policy refuses the connection to {target}: {why}; if \
             this source is meant to be reachable, start the daemon with {open}"
        )
    }
}

/// Where sources may connect. See the module documentation. `Default` is the built-in
/// policy: link-local refused, everything else allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPolicy {
    defaults: Vec<Rule>,
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

impl Default for EgressPolicy {
    fn default() -> Self {
        Self {
            defaults: DEFAULT_DENY
                .iter()
                .filter_map(|cidr| cidr.parse().ok())
                .collect(),
            deny: Vec::new(),
            allow: Vec::new(),
        }
    }
}

impl EgressPolicy {
    /// The default policy with `deny` and `allow` rules added (the values of the repeatable
    /// `--source-deny` and `--source-allow` flags).
    pub fn new(deny: Vec<Rule>, allow: Vec<Rule>) -> Self {
        Self {
            deny,
            allow,
            ..Self::default()
        }
    }

    /// Parses the flag values; the error names the flag and the value.
    pub fn from_flags(deny: &[String], allow: &[String]) -> Result<Self, String> {
        let parse = |flag: &str, values: &[String]| -> Result<Vec<Rule>, String> {
            values
                .iter()
                .map(|value| value.parse().map_err(|e| format!("--{flag} {value}: {e}")))
                .collect()
        };
        Ok(Self::new(
            parse("source-deny", deny)?,
            parse("source-allow", allow)?,
        ))
    }

    /// Whether a connection to `ip` (reached through the name `host`, if any) is allowed.
    /// Pure. An allow rule wins only over a deny rule: it opens a hole, never more.
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), Refusal> {
        let host = host.map(normalize_host);
        self.decide(host.as_deref(), Some(ip))
    }

    /// The host-name rules alone, for a name whose addresses are not known here (a redirect
    /// hop before it connects, or a request through a proxy, which resolves it itself).
    pub fn check_host(&self, host: &str) -> Result<(), Refusal> {
        match IpAddr::from_str(host.trim_start_matches('[').trim_end_matches(']')) {
            Ok(ip) => self.check(None, ip),
            Err(_) => self.decide(Some(&normalize_host(host)), None),
        }
    }

    fn decide(&self, host: Option<&str>, ip: Option<IpAddr>) -> Result<(), Refusal> {
        let denied_by = if let Some(rule) = self.deny.iter().find(|r| r.matches(host, ip)) {
            DeniedBy::Flag(rule.clone())
        } else if let Some(rule) = self.defaults.iter().find(|r| r.matches(host, ip)) {
            DeniedBy::Default(rule.clone())
        } else {
            return Ok(());
        };
        if self.allow.iter().any(|r| r.matches(host, ip)) {
            return Ok(());
        }
        Err(Refusal {
            host: host.map(str::to_string),
            ip: ip.map(canonical_ip),
            denied_by,
        })
    }

    /// The addresses of `addrs` the policy allows for `host`, or the first refusal when it
    /// allows none. Pure.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        let mut first_refusal = None;
        let mut allowed = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match self.check(Some(host), addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(refusal) => {
                    first_refusal.get_or_insert(refusal);
                }
            }
        }
        match first_refusal {
            Some(refusal) if allowed.is_empty() => Err(refusal),
            Some(refusal) => {
                tracing::warn!(%refusal, "skipping refused addresses of {host}");
                Ok(allowed)
            }
            None => Ok(allowed),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:169.254.169.254`) is an IPv4 connection: judged as
/// the IPv4 address, so it cannot slip past IPv4 rules.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// `::ffff:10.0.0.0/104` is the IPv4 range 10.0.0.0/8.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

fn normalize_host(host: &str) -> String {
    host.trim()
        .trim_end_matches('.')
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// The narrowest rule that opens exactly `ip`.
fn single(ip: IpAddr) -> String {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

/// The class of an address, for messages.
pub fn address_class(ip: IpAddr) -> &'static str {
    let within = |cidr: &str| {
        cidr.parse::<IpNet>()
            .is_ok_and(|net| net.contains(&canonical_ip(ip)))
    };
    if within("169.254.0.0/16") || within("fe80::/10") {
        "a link-local address, where cloud metadata services live"
    } else if ip.is_loopback() || canonical_ip(ip).is_loopback() {
        "a loopback address"
    } else if ip.is_unspecified() || within("0.0.0.0/8") {
        "an unspecified address"
    } else if within("10.0.0.0/8") || within("172.16.0.0/12") || within("192.168.0.0/16") {
        "a private address"
    } else if within("100.64.0.0/10") {
        "a shared (carrier-grade NAT) address"
    } else if within("fc00::/7") {
        "a unique-local address"
    } else if ip.is_multicast() {
        "a multicast address"
    } else {
        "a public address"
    }
}

/// A reqwest resolver that resolves with the system resolver (getaddrinfo, as reqwest's
/// default does) and hands out only the addresses the policy allows. reqwest asks it for
/// every new connection, redirect hops included; literal IPs bypass it, see
/// [`redirect_policy`] and [`check_url`].
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl PolicyResolver {
    pub fn new(policy: Arc<EgressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            // Port 0: the connector puts the URL's port in.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter(&host, addrs)?;
            let addrs: reqwest::dns::Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// A redirect was refused because it goes from https to http.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a redirect from https to http ({to}) is not followed: the rest would travel unencrypted")]
pub struct DowngradeRefused {
    /// The redirect target, without credentials or query.
    pub to: String,
}

/// A redirect chain longer than the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {0} redirects")]
pub struct TooManyRedirects(pub usize);

/// The redirect policy of source clients: at most `max` redirects, never from https to http,
/// and every hop's host checked against `policy` (its host-name rules, and for a literal IP
/// its address: literal IPs never reach [`PolicyResolver`]).
pub fn redirect_policy(policy: Arc<EgressPolicy>, max: usize) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        // `previous` starts with the original URL, which is not a redirect.
        if attempt.previous().len() > max {
            return attempt.error(TooManyRedirects(max));
        }
        let next = attempt.url();
        if next.scheme() == "http"
            && attempt
                .previous()
                .last()
                .is_some_and(|from| from.scheme() == "https")
        {
            let to = crate::net::redact_url(next.as_str());
            return attempt.error(DowngradeRefused { to });
        }
        match check_url(&policy, next) {
            Ok(()) => attempt.follow(),
            Err(refusal) => attempt.error(refusal),
        }
    })
}

/// The checks possible from a URL alone: host-name rules, and the address of a literal IP.
pub fn check_url(policy: &EgressPolicy, url: &url::Url) -> Result<(), Refusal> {
    match url.host() {
        Some(url::Host::Ipv4(v4)) => policy.check(None, IpAddr::V4(v4)),
        Some(url::Host::Ipv6(v6)) => policy.check(None, IpAddr::V6(v6)),
        Some(url::Host::Domain(name)) => policy.check_host(name),
        None => Ok(()),
    }
}

/// Resolves `host` with the system resolver and checks every address, for clients that
/// resolve on their own (libgit2): the best possible before they connect, though the client's
/// own lookup may still return something else. A name that does not resolve passes: the
/// client then fails with its own, clearer error.
pub fn check_resolved_blocking(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
) -> Result<(), Refusal> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = IpAddr::from_str(bare) {
        return policy.check(None, ip);
    }
    policy.check_host(bare)?;
    let addrs: Vec<SocketAddr> = match std::net::ToSocketAddrs::to_socket_addrs(&(bare, port)) {
        Ok(addrs) => addrs.collect(),
        Err(error) => {
            tracing::debug!(host = bare, %error, "no addresses to check");
            return Ok(());
        }
    };
    if addrs.is_empty() {
        return Ok(());
    }
    // Every address must pass: which one libgit2 picks is up to it.
    addrs
        .iter()
        .try_for_each(|addr| policy.check(Some(bare), addr.ip()))
}

/// The [`Refusal`], [`DowngradeRefused`] or [`TooManyRedirects`] inside an error chain (a
/// reqwest error wraps the resolver's and the redirect policy's errors).
pub fn find_in_chain<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = current {
        if let Some(found) = err.downcast_ref::<T>() {
            return Some(found);
        }
        // `io::Error::source` skips the wrapped error itself.
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find_in_chain::<T>(inner)
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests;
