//! The graph and identity inventory as the admin commands show them: the records of
//! the store joined with the deny list and the outstanding join tokens.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use baton_proto::SpiffeId;

use super::graph::Graph;
use super::model::{EdgeView, GraphView, IdentityView};
use crate::join_token::Outstanding;

/// The graph's edges, sorted by caller, audience, scope.
pub fn graph_view(graph: &Graph, store: &str, max_edges: usize, now: i64) -> GraphView {
    let mut edges: Vec<EdgeView> = graph
        .edges()
        .map(|(key, stats)| EdgeView::new(key, stats, now))
        .collect();
    edges.sort_by(|a, b| {
        (&a.caller, &a.audience, &a.scope).cmp(&(&b.caller, &b.audience, &b.scope))
    });
    GraphView {
        generated_at: now,
        store: store.to_owned(),
        max_edges,
        edges,
    }
}

/// Every identity that was enrolled, attested, called or asked for, or has a join
/// token outstanding, sorted by ID. Audiences that are not SPIFFE IDs of a token ever
/// issued (a refused request may name anything) are left out: the inventory lists
/// identities, not what callers typed.
pub fn identities(
    graph: &Graph,
    denied: &HashSet<SpiffeId>,
    join_tokens: &[Outstanding],
) -> Vec<IdentityView> {
    let mut views: BTreeMap<String, IdentityView> = BTreeMap::new();
    let mut seen_as: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    let mut entry = |id: &str, how: &'static str, views: &mut BTreeMap<String, IdentityView>| {
        seen_as.entry(id.to_owned()).or_default().insert(how);
        if !views.contains_key(id) {
            views.insert(
                id.to_owned(),
                IdentityView {
                    id: id.to_owned(),
                    seen_as: Vec::new(),
                    cert_not_after: None,
                    enrolled_at: None,
                    last_attested: None,
                    last_token: None,
                    last_called: None,
                    tokens_issued: 0,
                    tokens_denied: 0,
                    join_tokens: Vec::new(),
                    denied: false,
                },
            );
        }
    };
    let positive = |t: i64| (t > 0).then_some(t);
    for (id, stats) in graph.identities() {
        if stats.enrolled_at > 0 {
            entry(id, "enrolled", &mut views);
        }
        if stats.last_attested > 0 {
            entry(id, "attested", &mut views);
        }
        if let Some(v) = views.get_mut(id) {
            v.cert_not_after = positive(stats.cert_not_after);
            v.enrolled_at = positive(stats.enrolled_at);
            v.last_attested = positive(stats.last_attested);
        }
    }
    for (key, stats) in graph.edges() {
        entry(&key.caller, "caller", &mut views);
        if let Some(v) = views.get_mut(&*key.caller) {
            v.tokens_issued += stats.issued;
            v.tokens_denied += stats.denied_total();
            v.last_token = v.last_token.max(positive(stats.last_issued));
        }
        if stats.issued > 0 {
            entry(&key.audience, "audience", &mut views);
            if let Some(v) = views.get_mut(&*key.audience) {
                v.last_called = v.last_called.max(positive(stats.last_issued));
            }
        }
    }
    for token in join_tokens {
        entry(token.id.as_str(), "join_token", &mut views);
        if let Some(v) = views.get_mut(token.id.as_str()) {
            v.join_tokens.push(token.handle.clone());
        }
    }
    for id in denied {
        entry(id.as_str(), "denied", &mut views);
    }
    views
        .into_values()
        .map(|mut v| {
            v.seen_as = seen_as
                .get(&v.id)
                .map(|s| s.iter().map(|h| (*h).to_owned()).collect())
                .unwrap_or_default();
            v.seen_as.retain(|h| h != "denied");
            v.denied =
                v.id.parse::<SpiffeId>()
                    .is_ok_and(|id| denied.contains(&id));
            v.join_tokens.sort();
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::visibility::graph::{EdgeEvent, EdgeRef};

    #[test]
    fn the_inventory_joins_records_deny_list_and_join_tokens() {
        let mut g = Graph::new(100);
        let edge = |caller, audience| EdgeRef {
            caller,
            audience,
            scope: "",
        };
        let (orders, payments) = (
            "spiffe://example.org/orders",
            "spiffe://example.org/payments",
        );
        g.record(edge(orders, payments), EdgeEvent::Issued(4), 500);
        g.record(
            edge(orders, "spiffe://example.org/<probe>"),
            EdgeEvent::Denied(0),
            600,
        );
        g.attested(orders, 9000, 500);
        g.enrolled("spiffe://example.org/new", 7000, 100);
        let denied: HashSet<SpiffeId> = [SpiffeId::new(orders).unwrap()].into();
        let tokens = [Outstanding {
            handle: "abcd1234abcd".into(),
            id: SpiffeId::new("spiffe://example.org/pending").unwrap(),
            created_at: Some(1),
            expires_at: 2,
        }];
        let views = identities(&g, &denied, &tokens);
        let ids: Vec<&str> = views.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://example.org/new",
                orders,
                payments,
                "spiffe://example.org/pending"
            ]
        );
        let o = &views[1];
        assert_eq!(o.seen_as, ["attested", "caller"]);
        assert_eq!(
            (o.tokens_issued, o.tokens_denied, o.last_token),
            (4, 1, Some(500))
        );
        assert_eq!(o.cert_not_after, Some(9000));
        assert!(o.denied);
        assert_eq!(views[2].seen_as, ["audience"]);
        assert_eq!(views[2].last_called, Some(500));
        assert!(!views[2].denied);
        assert_eq!(views[3].join_tokens, ["abcd1234abcd"]);
        assert_eq!(views[0].enrolled_at, Some(100));
    }
}
