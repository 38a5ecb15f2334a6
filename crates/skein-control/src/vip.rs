//! Virtual IPs for Services that set no `spec.addresses`, allocated from the Mesh's
//! `serviceCIDRs`. Pure: the addresses are a function of the Services stored now, never
//! written to the store, so every control-plane replica (and a restarted one) computes the
//! same ones without coordinating.
//!
//! The scheme, for each range (one IPv4 and/or one IPv6 network):
//!
//! 1. Every address a Service names in `spec.addresses` is reserved; such a Service keeps
//!    exactly its own addresses and gets none allocated.
//! 2. The other Services are taken oldest first, by `metadata.creationTimestamp` (namespace
//!    and name order those created in the same second; those without a timestamp come
//!    last). Each one's first choice is a stable hash (FNV-1a) of
//!    `namespace/name` mapped into the range's host addresses (never the network address,
//!    nor an IPv4 range's broadcast address); if that is taken, the next free address after
//!    it, wrapping around. When the range is full the Service gets no address from it, and
//!    [`Allocation::unallocated`] says so.
//!
//! **Stability.** A Service's allocated address is a function of the range, the reserved
//! addresses (every Service's `spec.addresses`, whatever its age) and the allocated
//! addresses of the Services ordered before it. Services ordered after it (created later)
//! therefore never move it, except through `spec.addresses`. It moves only when:
//!
//! - `serviceCIDRs` changes;
//! - a Service names its address in `spec.addresses` (reservations win);
//! - a Service ordered before it stops naming `spec.addresses` and now wants that address
//!   (a new Service is never ordered before an existing one);
//! - an address its probe skipped over becomes free (the earlier Service holding it is
//!   deleted or pinned elsewhere with `spec.addresses`, or the reservation is released):
//!   it moves back towards its first choice, as if that address had never been taken, and
//!   the one it leaves may in turn free the way for a later Service. Keeping the old
//!   address would need memory, that is a store write, which this scheme avoids on purpose.
//!
//! Collisions are rare while a range is sparse (in a /16, a new Service collides with
//! probability about n/65534 with n Services), but a move is possible and its freed
//! address can go to another Service in the same change. A Service whose address must
//! never move (callers that cache DNS answers, addresses configured outside the mesh)
//! should pin it with `spec.addresses`.

use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One Service as the allocator sees it.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// `metadata.creationTimestamp` (RFC 3339, UTC, whole seconds, as the store writes
    /// it: its text order is time order); `None` sorts after every timestamp.
    pub created: Option<&'a str>,
    /// Its `spec.addresses`: when not empty, exactly its addresses, and reserved.
    pub addresses: &'a [IpAddr],
}

/// A Service left without an address from a range, because the range is full.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Unallocated {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The full range.
    pub range: IpNet,
}

/// What [`allocate`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Every Service's virtual IPs by (namespace, name): its `spec.addresses` when it names
    /// some, otherwise one per range, in the order of the ranges (fewer when a range is
    /// full).
    pub addresses: BTreeMap<(String, String), Vec<IpAddr>>,
    /// The Services a full range left without an address, sorted.
    pub unallocated: Vec<Unallocated>,
}

/// Gives every Service its virtual IPs from `ranges` (see the module documentation).
/// The same Services give the same result whatever their order in `services`.
pub fn allocate(ranges: &[IpNet], services: &[Claim]) -> Allocation {
    let mut order: Vec<&Claim> = services.iter().collect();
    order.sort_by_key(|c| (c.created.is_none(), c.created, c.namespace, c.name));
    let reserved: Vec<IpAddr> = order.iter().flat_map(|c| c.addresses).copied().collect();
    let mut pools: Vec<Pool> = ranges.iter().map(|r| Pool::new(*r, &reserved)).collect();
    let mut out = Allocation::default();
    for claim in order {
        let key = (claim.namespace.to_string(), claim.name.to_string());
        if !claim.addresses.is_empty() {
            out.addresses.insert(key, claim.addresses.to_vec());
            continue;
        }
        let first = fnv1a(format!("{}/{}", claim.namespace, claim.name).as_bytes());
        let mut mine = Vec::new();
        for pool in &mut pools {
            match pool.take(first) {
                Some(ip) => mine.push(ip),
                None => out.unallocated.push(Unallocated {
                    namespace: claim.namespace.to_string(),
                    name: claim.name.to_string(),
                    range: pool.range,
                }),
            }
        }
        out.addresses.insert(key, mine);
    }
    out.unallocated.sort();
    out
}

/// The host addresses of one range as offsets `0..usable` from the first of them, and
/// those taken.
struct Pool {
    range: IpNet,
    /// The first host address (the network address + 1), as a number.
    first: u128,
    /// How many host addresses there are: all but the network address, and for IPv4
    /// the broadcast address.
    usable: u128,
    taken: BTreeSet<u128>,
}

impl Pool {
    fn new(range: IpNet, reserved: &[IpAddr]) -> Pool {
        let range = range.trunc();
        let host_bits = u32::from(range.max_prefix_len() - range.prefix_len());
        let size_minus_one = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
        let usable = match range {
            IpNet::V4(_) => size_minus_one.saturating_sub(1),
            IpNet::V6(_) => size_minus_one,
        };
        let mut pool = Pool {
            range,
            first: number(range.network()).saturating_add(1),
            usable,
            taken: BTreeSet::new(),
        };
        for ip in reserved {
            if let Some(offset) = pool.offset(*ip) {
                pool.taken.insert(offset);
            }
        }
        pool
    }

    /// `ip`'s offset, if it is one of the range's host addresses.
    fn offset(&self, ip: IpAddr) -> Option<u128> {
        if ip.is_ipv4() != self.range.addr().is_ipv4() {
            return None;
        }
        let offset = number(ip).checked_sub(self.first)?;
        (offset < self.usable).then_some(offset)
    }

    /// The first free address from `hash`'s place in the range onwards, wrapping; `None`
    /// when the range is full. Takes at most one step more than there are taken addresses.
    fn take(&mut self, hash: u64) -> Option<IpAddr> {
        if self.taken.len() as u128 >= self.usable {
            return None;
        }
        let mut offset = u128::from(hash) % self.usable;
        while self.taken.contains(&offset) {
            offset += 1;
            if offset == self.usable {
                offset = 0;
            }
        }
        self.taken.insert(offset);
        let n = self.first + offset;
        Some(match self.range {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        })
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// 64-bit FNV-1a: tiny, and the same on every machine and release (unlike std's hasher,
/// which is randomly keyed per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn claim<'a>(name: &'a str, created: &'a str, addresses: &'a [IpAddr]) -> Claim<'a> {
        Claim {
            namespace: "default",
            name,
            created: (!created.is_empty()).then_some(created),
            addresses,
        }
    }

    fn of<'a>(a: &'a Allocation, name: &str) -> &'a [IpAddr] {
        &a.addresses[&("default".to_string(), name.to_string())]
    }

    /// The offset of `default/{name}`'s first choice in `range`.
    fn place(range: IpNet, name: &str) -> u128 {
        let usable = Pool::new(range, &[]).usable;
        u128::from(fnv1a(format!("default/{name}").as_bytes())) % usable
    }

    /// `count` names whose first choice in `range` is the same, found by search.
    fn colliding(range: IpNet, count: usize) -> Vec<String> {
        let place = |n: &str| place(range, n);
        let target = place("svc-0");
        (0..)
            .map(|i| format!("svc-{i}"))
            .filter(|n| place(n) == target)
            .take(count)
            .collect()
    }

    #[test]
    fn fnv1a_matches_the_reference_values() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn the_same_services_give_the_same_addresses_in_any_order() {
        let ranges = [net("10.240.0.0/16"), net("fd00:10:240::/112")];
        let fixed = [ip("10.96.0.10")];
        let mut services = vec![
            claim("web", "2024-05-01T10:00:00Z", &[]),
            claim("api", "2024-05-01T10:00:00Z", &[]),
            claim("db", "", &[]),
            claim("pinned", "2024-04-01T10:00:00Z", &fixed),
            claim("cache", "2024-03-01T10:00:00Z", &[]),
        ];
        let one = allocate(&ranges, &services);
        services.reverse();
        assert_eq!(allocate(&ranges, &services), one);
        services.swap(0, 3);
        assert_eq!(allocate(&ranges, &services), one);
        assert_eq!(of(&one, "pinned"), fixed);
        for name in ["web", "api", "db", "cache"] {
            let got = of(&one, name);
            assert_eq!(got.len(), 2, "{name}: one address per family");
            assert!(ranges[0].contains(&got[0]) && ranges[1].contains(&got[1]));
        }
    }

    #[test]
    fn reserved_addresses_are_never_allocated() {
        // A /30 has two host addresses; one is reserved by another Service's spec.
        let range = net("198.18.0.0/30");
        let fixed = [ip("198.18.0.1"), ip("192.0.2.1")];
        let services = [
            claim("pinned", "2024-05-02T00:00:00Z", &fixed),
            claim("a", "2024-05-01T00:00:00Z", &[]),
            claim("b", "2024-05-01T00:00:01Z", &[]),
        ];
        let got = allocate(&[range], &services);
        assert_eq!(of(&got, "pinned"), fixed, "exactly its own, nothing added");
        assert_eq!(
            of(&got, "a"),
            [ip("198.18.0.2")],
            "created earlier, but reserved wins"
        );
        assert_eq!(of(&got, "b"), [] as [IpAddr; 0]);
        assert_eq!(
            got.unallocated,
            [Unallocated {
                namespace: "default".into(),
                name: "b".into(),
                range
            }]
        );
    }

    #[test]
    fn a_collision_probes_to_the_next_free_address() {
        let range = net("198.18.0.0/24");
        let names = colliding(range, 3);
        let services: Vec<Claim> = names
            .iter()
            .enumerate()
            .map(|(i, n)| Claim {
                namespace: "default",
                name: n,
                created: Some(
                    [
                        "2024-01-01T00:00:00Z",
                        "2024-02-01T00:00:00Z",
                        "2024-03-01T00:00:00Z",
                    ][i],
                ),
                addresses: &[],
            })
            .collect();
        let got = allocate(&[range], &services);
        let first = of(&got, &names[0])[0];
        let n = |ip: IpAddr| number(ip) - number(range.network());
        let after = |prev: u128| if prev == 254 { 1 } else { prev + 1 };
        assert_eq!(n(of(&got, &names[1])[0]), after(n(first)), "next one");
        assert_eq!(
            n(of(&got, &names[2])[0]),
            after(after(n(first))),
            "and the next"
        );
    }

    #[test]
    fn deleting_the_earlier_of_two_colliding_services_moves_the_later_back() {
        let range = net("198.18.0.0/24");
        let names = colliding(range, 2);
        let both = [
            claim(&names[0], "2024-01-01T00:00:00Z", &[]),
            claim(&names[1], "2024-02-01T00:00:00Z", &[]),
        ];
        let before = allocate(&[range], &both);
        let after = allocate(&[range], &both[1..]);
        // The documented caveat: with no memory, the later one gets its first choice.
        assert_eq!(of(&after, &names[1]), of(&before, &names[0]));
    }

    #[test]
    fn a_full_range_reports_who_got_nothing() {
        let range = net("198.18.0.4/30");
        let services = [
            claim("a", "2024-05-01T00:00:00Z", &[]),
            claim("b", "2024-05-01T00:00:01Z", &[]),
            claim("c", "2024-05-01T00:00:02Z", &[]),
            claim("d", "2024-05-01T00:00:03Z", &[]),
        ];
        let got = allocate(&[range], &services);
        let mut given: Vec<IpAddr> = ["a", "b"]
            .iter()
            .flat_map(|n| of(&got, n).to_vec())
            .collect();
        given.sort();
        assert_eq!(
            given,
            [ip("198.18.0.5"), ip("198.18.0.6")],
            "the oldest two"
        );
        let left: Vec<&str> = got.unallocated.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(left, ["c", "d"]);
        assert!(of(&got, "c").is_empty());
    }

    #[test]
    fn dual_stack_gives_one_address_of_each_family() {
        let ranges = [net("fd00:10:240::/120"), net("10.240.0.0/16")];
        let services = [claim("web", "2024-05-01T00:00:00Z", &[])];
        let got = allocate(&ranges, &services);
        let web = of(&got, "web");
        assert_eq!(web.len(), 2);
        assert!(
            web[0].is_ipv6() && ranges[0].contains(&web[0]),
            "in the order of the ranges"
        );
        assert!(web[1].is_ipv4() && ranges[1].contains(&web[1]));
        // A v6-only or v4-only Service with its own addresses gets nothing added.
        let fixed = [ip("fd00::1")];
        let got = allocate(&ranges, &[claim("v6", "", &fixed)]);
        assert_eq!(of(&got, "v6"), fixed);
    }

    #[test]
    fn network_and_broadcast_addresses_are_never_allocated() {
        for (range, excluded) in [
            ("198.18.0.0/30", ["198.18.0.0", "198.18.0.3"]),
            ("198.18.0.0/29", ["198.18.0.0", "198.18.0.7"]),
            ("fd00::/126", ["fd00::", "fd00::"]),
        ] {
            let range = net(range);
            let names: Vec<String> = (0..8).map(|i| format!("svc-{i}")).collect();
            let services: Vec<Claim> = names.iter().map(|n| claim(n, "", &[])).collect();
            let got = allocate(&[range], &services);
            let all: Vec<IpAddr> = got.addresses.values().flatten().copied().collect();
            let usable = if range.addr().is_ipv4() {
                range.hosts().count()
            } else {
                3
            };
            assert_eq!(all.len(), usable, "{range}: every host address, once");
            let distinct: BTreeSet<_> = all.iter().collect();
            assert_eq!(distinct.len(), all.len());
            for ip in &all {
                assert!(range.contains(ip));
                assert!(
                    !excluded.contains(&ip.to_string().as_str()),
                    "{range}: {ip}"
                );
            }
            assert_eq!(got.unallocated.len(), 8 - usable);
        }
    }

    #[test]
    fn a_later_service_never_moves_earlier_ones() {
        // A small range, so that newcomers collide often.
        let range = net("198.18.0.0/28");
        let names: Vec<String> = (0..14).map(|i| format!("svc-{i}")).collect();
        let stamps: Vec<String> = (0..14)
            .map(|i| format!("2024-05-01T00:00:{i:02}Z"))
            .collect();
        let all: Vec<Claim> = names
            .iter()
            .zip(&stamps)
            .map(|(n, t)| claim(n, t, &[]))
            .collect();
        let mut previous = allocate(&[range], &[]);
        for k in 1..=all.len() {
            let now = allocate(&[range], &all[..k]);
            for (key, addresses) in &previous.addresses {
                assert_eq!(
                    &now.addresses[key],
                    addresses,
                    "{key:?} moved when {} came",
                    names[k - 1]
                );
            }
            previous = now;
        }
        assert!(previous.unallocated.is_empty(), "14 fit in a /28");
        let first = Pool::new(range, &[]).first;
        let probed = names
            .iter()
            .filter(|n| number(of(&previous, n)[0]) - first != place(range, n))
            .count();
        assert!(probed > 0, "the test needs collisions");
    }

    #[test]
    fn a_slash_64_is_handled_without_overflow() {
        let ranges = [net("fd00::/64")];
        let got = allocate(&ranges, &[claim("web", "", &[])]);
        let web = of(&got, "web")[0];
        assert!(ranges[0].contains(&web) && web != ip("fd00::"));
    }
}
