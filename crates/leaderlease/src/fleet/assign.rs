//! Which member campaigns for which name: a pure function of the names and the live members, so that
//! every member that sees the same member list computes the same plan, with nothing to agree on.
//!
//! - **Rendezvous (highest-random-weight) hashing**: for each name, every member gets a score, a 64-bit
//!   hash of the name and the member id; a name prefers the members by score. A member that joins is the
//!   top choice of about `1/M` of the names, and only those want to move.
//! - **Bounded load**: each member may own `⌊N/M⌋` names, or one more: `N mod M` members get the one
//!   more, the first in the members' order below. So at any member list, max - min <= 1.
//! - **Names choose, members keep their best**: the plan is the name-proposing stable matching
//!   (deferred acceptance) of names to members, where a member over its bound keeps the names that score
//!   it highest. It is unique, so it does not depend on the order in which anything is listed.
//! - **The members' order**: newest `version` first (compared piecewise, numbers by value), then the
//!   earliest start, then the id. It decides who gets the extra name, which is everything for a name led
//!   by one member out of many (a singleton): it stays with the oldest member of the newest version, so a
//!   rolling deploy moves it once, to the first member of the new version, and the members that join
//!   after that do not take it.
//!
//! The plan only decides who tries. Two members with different lists may both campaign for a name;
//! the lease row still lets one lead at a time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::MemberInfo;

/// The score of `member` for `name`: a 64-bit mix of both (FNV-1a, then the SplitMix64 finaliser, which
/// spreads the bits of similar inputs). The same on every platform and in every release.
pub fn score(name: &str, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0xff]).chain(member.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Compares two versions piecewise: runs of digits by their value, other runs as text; a version that
/// is a prefix of the other is the older. No version is older than any.
///
/// ```
/// use std::cmp::Ordering;
/// use leaderlease::fleet::assign::compare_versions;
/// assert_eq!(compare_versions(Some("1.10.0"), Some("1.9.3")), Ordering::Greater);
/// assert_eq!(compare_versions(None, Some("0")), Ordering::Less);
/// ```
pub fn compare_versions(a: Option<&str>, b: Option<&str>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => {
            let (mut x, mut y) = (runs(a), runs(b));
            loop {
                match (x.next(), y.next()) {
                    (None, None) => return Ordering::Equal,
                    (None, Some(_)) => return Ordering::Less,
                    (Some(_), None) => return Ordering::Greater,
                    (Some(p), Some(q)) => {
                        let o = compare_run(p, q);
                        if o != Ordering::Equal {
                            return o;
                        }
                    }
                }
            }
        }
    }
}

/// The runs of digits and of other characters of `s`.
fn runs(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.chars().next()?;
        let digit = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != digit)
            .unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        rest = tail;
        Some(run)
    })
}

fn compare_run(p: &str, q: &str) -> Ordering {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if digits(p) && digits(q) {
        let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
        p.len().cmp(&q.len()).then_with(|| p.cmp(q))
    } else {
        p.cmp(q)
    }
}

/// The members' order of preference (see [the module](self)): newest version, then earliest start, then
/// id. Returns indexes into `members`.
pub fn preference(members: &[MemberInfo]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&i, &j| {
        let (a, b) = (&members[i], &members[j]);
        compare_versions(b.version.as_deref(), a.version.as_deref())
            .then(a.started_at_us.cmp(&b.started_at_us))
            .then_with(|| a.id.cmp(&b.id))
    });
    order
}

/// The bound of each member (indexes as in `members`): `⌊N/M⌋`, plus one for the first `N mod M` in the
/// order of [`preference`].
pub fn capacities(names: usize, members: &[MemberInfo]) -> Vec<usize> {
    let m = members.len();
    if m == 0 {
        return Vec::new();
    }
    let (base, extra) = (names / m, names % m);
    let mut caps = vec![base; m];
    for &i in preference(members).iter().take(extra) {
        caps[i] += 1;
    }
    caps
}

/// A name held by a member during the matching, ordered so that the heap's top is the one the member
/// likes least (lowest score; on a tie, the later name).
#[derive(PartialEq, Eq)]
struct Held {
    score: u64,
    name: usize,
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .cmp(&self.score)
            .then(self.name.cmp(&other.name))
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The plan: for each name (in the order given), the index in `members` of the member that should lead
/// it; `None` only when there is no member. Deterministic: the same names and members (in any order,
/// with the same ids, versions and start times) give the same owners.
///
/// ```
/// use leaderlease::fleet::MemberInfo;
/// use leaderlease::fleet::assign::plan;
///
/// let member = |id: &str| MemberInfo { id: id.into(), version: None, started_at_us: 0 };
/// let members = [member("a"), member("b"), member("c")];
/// let names: Vec<String> = (0..30).map(|i| format!("job-{i}")).collect();
/// let owners = plan(&names, &members);
/// for m in 0..3 {
///     assert_eq!(owners.iter().filter(|o| **o == Some(m)).count(), 10);
/// }
/// ```
pub fn plan<N: AsRef<str>>(names: &[N], members: &[MemberInfo]) -> Vec<Option<usize>> {
    plan_from(names, members, &[])
}

/// The plan given who holds each name now (`holders[i]`: the id of the member leading `names[i]`, if
/// known; a shorter slice means unknown for the rest): each member keeps, up to its bound, the names it
/// holds that score it highest; the other names (unheld, held by no member, or beyond a holder's bound)
/// are matched as in [`plan`] to the members' remaining room. So a join moves only names to the new
/// member, a leave only the departed member's names, and a plan carried out is its own plan again (no
/// further moves). With no holders known it is [`plan`].
///
/// ```
/// use leaderlease::fleet::MemberInfo;
/// use leaderlease::fleet::assign::{plan, plan_from};
///
/// let member = |id: &str| MemberInfo { id: id.into(), version: None, started_at_us: 0 };
/// let three = [member("a"), member("b"), member("c")];
/// let names: Vec<String> = (0..30).map(|i| format!("job-{i}")).collect();
/// let held: Vec<Option<&str>> = plan(&names, &three).iter().map(|o| o.map(|i| three[i].id.as_str())).collect();
/// let four = [member("a"), member("b"), member("c"), member("d")];
/// let next = plan_from(&names, &four, &held);
/// // Only names that go to d move.
/// for (n, o) in next.iter().enumerate() {
///     let to = four[o.unwrap()].id.as_str();
///     assert!(to == "d" || Some(to) == held[n]);
/// }
/// assert_eq!(next.iter().filter(|o| **o == Some(3)).count(), 7);
/// ```
pub fn plan_from<N: AsRef<str>>(
    names: &[N],
    members: &[MemberInfo],
    holders: &[Option<&str>],
) -> Vec<Option<usize>> {
    let m = members.len();
    if m == 0 {
        return vec![None; names.len()];
    }
    let mut room = capacities(names.len(), members);
    let mut owners = vec![None; names.len()];
    for (i, mem) in members.iter().enumerate() {
        let mut held: Vec<(u64, usize)> = (0..names.len())
            .filter(|&n| holders.get(n).copied().flatten() == Some(mem.id.as_str()))
            .map(|n| (score(names[n].as_ref(), &mem.id), n))
            .collect();
        held.sort_by(|a, b| {
            b.0.cmp(&a.0)
                .then_with(|| names[a.1].as_ref().cmp(names[b.1].as_ref()))
        });
        let kept = held.len().min(room[i]);
        for &(_, n) in &held[..kept] {
            owners[n] = Some(i);
        }
        room[i] -= kept;
    }
    let free: Vec<usize> = (0..names.len()).filter(|&n| owners[n].is_none()).collect();
    for (k, o) in matching(names, &free, members, &room)
        .into_iter()
        .enumerate()
    {
        owners[free[k]] = o;
    }
    owners
}

/// The name-proposing deferred acceptance of the names `free` (indexes into `names`) to the members,
/// each taking at most `room[i]`; owners in the order of `free`.
fn matching<N: AsRef<str>>(
    names: &[N],
    free: &[usize],
    members: &[MemberInfo],
    room: &[usize],
) -> Vec<Option<usize>> {
    // Each name's members, best first (score, then id: strict, so the matching is unique).
    let prefs: Vec<Vec<(u64, usize)>> = free
        .iter()
        .map(|&n| {
            let mut p: Vec<(u64, usize)> = members
                .iter()
                .enumerate()
                .map(|(i, mem)| (score(names[n].as_ref(), &mem.id), i))
                .collect();
            p.sort_by(|a, b| {
                b.0.cmp(&a.0)
                    .then_with(|| members[a.1].id.cmp(&members[b.1].id))
            });
            p
        })
        .collect();
    let mut next = vec![0usize; free.len()];
    let mut held: Vec<BinaryHeap<Held>> = (0..members.len()).map(|_| BinaryHeap::new()).collect();
    let mut waiting: Vec<usize> = (0..free.len()).rev().collect();
    while let Some(k) = waiting.pop() {
        // The room left is the number of free names, so a name finds a place before its list ends.
        let Some(&(s, i)) = prefs[k].get(next[k]) else {
            continue;
        };
        next[k] += 1;
        held[i].push(Held { score: s, name: k });
        if held[i].len() > room[i]
            && let Some(out) = held[i].pop()
        {
            waiting.push(out.name);
        }
    }
    let mut owners = vec![None; free.len()];
    for (i, h) in held.iter().enumerate() {
        for x in h.iter() {
            owners[x.name] = Some(i);
        }
    }
    owners
}

/// The fewest names that must change owner when the owners `before` (member ids, one per name) give way
/// to any balanced plan over `after`: the names of departed members, and those of staying members beyond
/// their new bound (the extra name going to the staying members that hold the most).
pub fn optimal_moves(before: &[Option<&str>], after: &[MemberInfo]) -> usize {
    let n = before.len();
    let m = after.len();
    if m == 0 {
        return 0;
    }
    let mut loads: Vec<usize> = after
        .iter()
        .map(|mem| {
            before
                .iter()
                .filter(|o| **o == Some(mem.id.as_str()))
                .count()
        })
        .collect();
    loads.sort_unstable_by(|a, b| b.cmp(a));
    let (base, extra) = (n / m, n % m);
    let kept: usize = loads
        .iter()
        .enumerate()
        .map(|(k, &load)| load.min(base + usize::from(k < extra)))
        .sum();
    n - kept
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (SplitMix64), so that every run checks the same cases.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn member(id: &str, version: Option<&str>, started: i64) -> MemberInfo {
        MemberInfo {
            id: id.to_owned(),
            version: version.map(str::to_owned),
            started_at_us: started,
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("name-{i}")).collect()
    }

    fn owners<'a>(names: &[String], members: &'a [MemberInfo]) -> Vec<Option<&'a str>> {
        plan(names, members)
            .into_iter()
            .map(|o| o.map(|i| members[i].id.as_str()))
            .collect()
    }

    fn moves(a: &[Option<&str>], b: &[Option<&str>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    fn spread(owners: &[Option<&str>], members: &[MemberInfo]) -> (usize, usize) {
        let loads: Vec<usize> = members
            .iter()
            .map(|m| owners.iter().filter(|o| **o == Some(m.id.as_str())).count())
            .collect();
        (*loads.iter().min().unwrap(), *loads.iter().max().unwrap())
    }

    #[test]
    fn versions_compare_piecewise() {
        use Ordering::*;
        let c = |a, b| compare_versions(Some(a), Some(b));
        assert_eq!(c("1.10", "1.9"), Greater);
        assert_eq!(c("1.9", "1.10"), Less);
        assert_eq!(c("2.0.0", "2.0.0"), Equal);
        assert_eq!(c("2.0.01", "2.0.1"), Equal);
        assert_eq!(c("2.0", "2.0.1"), Less);
        assert_eq!(c("v3", "v12"), Less);
        assert_eq!(c("b", "a"), Greater);
        assert_eq!(compare_versions(None, None), Equal);
        assert_eq!(compare_versions(Some("x"), None), Greater);
    }

    #[test]
    fn the_plan_is_balanced_and_does_not_depend_on_the_order_of_members() {
        let mut rng = Rng(7);
        for case in 0..200 {
            let m = 1 + rng.below(9);
            let n = rng.below(120);
            let members: Vec<MemberInfo> = (0..m)
                .map(|i| member(&format!("m{case}-{i}"), None, rng.below(5) as i64))
                .collect();
            let names = names(n);
            let a = owners(&names, &members);
            let mut shuffled = members.clone();
            shuffled.reverse();
            shuffled.rotate_left(rng.below(m));
            let b = owners(&names, &shuffled);
            assert_eq!(a, b, "case {case}: the same plan from another order");
            assert!(a.iter().all(Option::is_some));
            let (min, max) = spread(&a, &members);
            assert!(max - min <= 1, "case {case}: {min}..{max}");
            assert_eq!(a, owners(&names, &members), "deterministic");
        }
    }

    #[test]
    fn no_member_no_owner() {
        assert_eq!(plan(&names(3), &[]), vec![None, None, None]);
    }

    #[test]
    fn a_singleton_goes_to_the_oldest_member_of_the_newest_version() {
        let members = [
            member("a", Some("1.9"), 1),
            member("b", Some("1.10"), 3),
            member("c", Some("1.10"), 2),
            member("d", None, 0),
        ];
        assert_eq!(owners(&names(1), &members), [Some("c")]);
        let unversioned = [member("x", None, 5), member("y", None, 4)];
        assert_eq!(
            owners(&names(1), &unversioned),
            [Some("y")],
            "earliest start"
        );
    }

    /// A rolling deploy of `m` members from version 1 to 2: each old member in turn is replaced by a
    /// new one (leave, then join with a new id). The singleton moves once: to the first new member.
    #[test]
    fn a_rolling_deploy_moves_a_singleton_once() {
        for m in 2..8 {
            let mut members: Vec<MemberInfo> = (0..m)
                .map(|i| member(&format!("old-{i}"), Some("1"), i as i64))
                .collect();
            let names = names(1);
            let mut owner = owners(&names, &members)[0].map(str::to_owned);
            let mut moved = 0;
            for i in 0..m {
                members.retain(|x| x.id != format!("old-{i}"));
                let now = owners(&names, &members)[0].map(str::to_owned);
                moved += usize::from(now != owner);
                owner = now;
                members.push(member(&format!("new-{i}"), Some("2"), 100 + i as i64));
                let now = owners(&names, &members)[0].map(str::to_owned);
                moved += usize::from(now != owner);
                owner = now;
            }
            assert_eq!(owner.as_deref(), Some("new-0"), "{m} members");
            // Once to new-0, plus once more if the deploy restarted its old owner before new-0 came
            // (old-0 holds it as the oldest, and leaves first).
            assert!(moved <= 2, "{m} members: {moved} moves");
        }
    }

    /// Joins and leaves, seeded: the moves of each change against the fewest possible, over many
    /// cases. The bound is what this algorithm achieves (printed with `--nocapture`); the ideal is 1.
    #[test]
    fn joins_and_leaves_move_close_to_the_fewest_names() {
        let mut rng = Rng(42);
        let (mut total, mut optimum, mut worst) = (0usize, 0usize, 0f64);
        let (mut join_moves, mut join_opt, mut leave_moves, mut leave_opt) = (0, 0, 0, 0);
        for case in 0..300 {
            let m = 2 + rng.below(8);
            let n = 1 + rng.below(300);
            let names = names(n);
            let mut members: Vec<MemberInfo> = (0..m)
                .map(|i| member(&format!("c{case}-{i}"), None, i as i64))
                .collect();
            let before: Vec<Option<String>> = owners(&names, &members)
                .into_iter()
                .map(|o| o.map(str::to_owned))
                .collect();
            let join = rng.below(2) == 0;
            let departed = format!("c{case}-{}", rng.below(m));
            if join {
                members.push(member(&format!("c{case}-new"), None, 99));
            } else {
                members.retain(|x| x.id != departed);
            }
            let b: Vec<Option<&str>> = before.iter().map(|o| o.as_deref()).collect();
            let after = owners(&names, &members);
            let mv = moves(&b, &after);
            let opt = optimal_moves(&b, &members);
            assert!(mv >= opt);
            // What moved: on a join, names to the new member (and the names displaced on the way); on a
            // leave, at least every name of the departed member.
            if !join {
                assert!(
                    b.iter()
                        .zip(&after)
                        .all(|(x, y)| *x != Some(departed.as_str()) || y != x)
                );
                leave_moves += mv;
                leave_opt += opt;
            } else {
                join_moves += mv;
                join_opt += opt;
            }
            total += mv;
            optimum += opt;
            if opt > 0 {
                worst = worst.max(mv as f64 / opt as f64);
            }
        }
        eprintln!(
            "300 changes: {total} moves, optimum {optimum} ({:.3}x); joins {join_moves}/{join_opt}, \
             leaves {leave_moves}/{leave_opt}; worst case {worst:.2}x",
            total as f64 / optimum as f64
        );
        assert!(
            total as f64 <= optimum as f64 * 1.5,
            "{total} moves against an optimum of {optimum}"
        );
    }

    /// The issue's scenarios by the plan alone: 30 names over 3 members started together, and one at a
    /// time (the optimum: 0 and 25).
    #[test]
    fn starting_members_move_close_to_the_fewest_names() {
        let names = names(30);
        let all: Vec<MemberInfo> = (0..3).map(|i| member(&format!("s{i}"), None, i)).collect();
        let mut moved = 0;
        let mut optimum = 0;
        let mut prev: Vec<Option<String>> = vec![None; 30];
        for k in 1..=3 {
            let now = owners(&names, &all[..k]);
            let p: Vec<Option<&str>> = prev.iter().map(|o| o.as_deref()).collect();
            if k > 1 {
                moved += moves(&p, &now);
                optimum += optimal_moves(&p, &all[..k]);
            }
            prev = now.into_iter().map(|o| o.map(str::to_owned)).collect();
        }
        eprintln!("rolling start of 3 over 30 names: {moved} moves, optimum {optimum}");
        assert_eq!(optimum, 25);
        assert!(moved <= 30, "{moved}");
    }
}
