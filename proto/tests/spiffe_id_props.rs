//! Property tests for the SPIFFE ID parser (SPEC §2): valid IDs round-trip, hostile
//! input never panics, and each kind of damage is refused.

use baton_proto::{SpiffeId, SpiffeIdError, TrustDomain};
use proptest::prelude::*;

fn trust_domain() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,2}"
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

fn valid_id() -> impl Strategy<Value = String> {
    (trust_domain(), prop::collection::vec(segment(), 1..6))
        .prop_map(|(td, segs)| format!("spiffe://{td}/{}", segs.join("/")))
}

proptest! {
    #[test]
    fn valid_ids_parse_and_round_trip(s in valid_id()) {
        let id = SpiffeId::new(&s).unwrap();
        prop_assert_eq!(id.as_str(), s.as_str());
        prop_assert_eq!(SpiffeId::new(id.as_ref()).unwrap(), id.clone());
        prop_assert_eq!(format!("spiffe://{}{}", id.trust_domain_name(), id.path()), s);
        let json = serde_json::to_string(&id).unwrap();
        prop_assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id.clone());
        prop_assert!(id.is_member_of(&TrustDomain::new(id.trust_domain_name()).unwrap()));
    }

    #[test]
    fn arbitrary_input_never_panics(s in "\\PC{0,80}") {
        let _ = SpiffeId::new(&s);
        let _ = TrustDomain::new(&s);
    }

    #[test]
    fn arbitrary_suffix_after_scheme_never_panics_and_accepted_ids_reparse(s in "spiffe://[ -~]{0,60}") {
        if let Ok(id) = SpiffeId::new(&s) {
            prop_assert_eq!(SpiffeId::new(id.as_str()).unwrap(), id);
        }
    }

    #[test]
    fn upper_case_in_trust_domain_is_refused(s in valid_id(), at in any::<prop::sample::Index>()) {
        let td_len = s["spiffe://".len()..].find('/').unwrap();
        let i = "spiffe://".len() + at.index(td_len);
        let mut bytes = s.into_bytes();
        bytes[i] = b'Q';
        let s = String::from_utf8(bytes).unwrap();
        prop_assert_eq!(SpiffeId::new(&s), Err(SpiffeIdError::TrustDomainUpperCase { found: 'Q' }));
    }

    #[test]
    fn dot_segments_anywhere_are_refused(s in valid_id(), dots in prop::sample::select(vec![".", ".."])) {
        prop_assert_eq!(SpiffeId::new(&format!("{s}/{dots}")), Err(SpiffeIdError::DotSegment));
        let (head, tail) = s.split_at(s.rfind('/').unwrap());
        prop_assert_eq!(SpiffeId::new(&format!("{head}/{dots}{tail}")), Err(SpiffeIdError::DotSegment));
    }

    #[test]
    fn empty_segments_are_refused(s in valid_id()) {
        prop_assert_eq!(SpiffeId::new(&format!("{s}/")), Err(SpiffeIdError::EmptySegment));
        let (head, tail) = s.split_at(s.rfind('/').unwrap());
        prop_assert_eq!(SpiffeId::new(&format!("{head}/{tail}")), Err(SpiffeIdError::EmptySegment));
    }

    #[test]
    fn query_and_fragment_are_refused(s in valid_id(), extra in "[a-z=&]{0,10}") {
        prop_assert_eq!(SpiffeId::new(&format!("{s}?{extra}")), Err(SpiffeIdError::Query));
        prop_assert_eq!(SpiffeId::new(&format!("{s}#{extra}")), Err(SpiffeIdError::Fragment));
    }

    #[test]
    fn bare_trust_domain_is_not_a_workload_id(td in trust_domain()) {
        prop_assert_eq!(SpiffeId::new(&format!("spiffe://{td}")), Err(SpiffeIdError::MissingPath));
        prop_assert!(TrustDomain::new(&td).is_ok());
    }

    #[test]
    fn other_schemes_are_refused(s in valid_id(), scheme in "(https|http|SPIFFE|spiffee|urn)") {
        let other = s.replacen("spiffe", &scheme, 1);
        prop_assert_eq!(SpiffeId::new(&other), Err(SpiffeIdError::WrongScheme));
    }
}
