//! `SpiffeId` and `TrustDomain` parsing (baton-proto), with the invariants callers
//! rely on: a parsed ID is exactly its input (no normalisation: IDs are compared as
//! strings everywhere), its trust domain and path split it in two, its trust domain
//! parses as a `TrustDomain`, and the serde and `FromStr` paths agree with `new`.
#![no_main]

use baton_proto::{SpiffeId, TrustDomain};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let id = SpiffeId::new(s);
    let json = serde_json::to_string(s).expect("a str serializes");
    match &id {
        Ok(id) => {
            assert_eq!(id.as_str(), s);
            assert_eq!(id.to_string(), s);
            let td_name = id.trust_domain_name();
            assert_eq!(
                format!("spiffe://{td_name}{}", id.path()),
                s,
                "trust domain and path do not split the ID"
            );
            assert!(id.path().starts_with('/'));
            let td = TrustDomain::new(td_name).expect("the trust domain of an ID parses");
            assert_eq!(td, id.trust_domain());
            assert!(id.is_member_of(&td));
            assert_eq!(td.id_uri(), format!("spiffe://{td_name}"));
            assert_eq!(SpiffeId::new(id.as_str()).as_ref(), Ok(id));
            assert_eq!(serde_json::to_string(id).expect("serialize"), json);
            assert_eq!(
                id.is_reserved(),
                id.path() == "/baton" || id.path().starts_with("/baton/")
            );
        }
        Err(_) => assert!(s.parse::<SpiffeId>().is_err()),
    }
    // serde goes through TryFrom<String>: it must accept exactly what `new` accepts.
    let via_serde = serde_json::from_str::<SpiffeId>(&json);
    assert_eq!(via_serde.ok(), id.ok());

    if let Ok(td) = TrustDomain::new(s) {
        assert_eq!(td.as_str(), s);
        assert_eq!(td.to_string(), s);
        let signer = td.token_signer_id();
        assert!(signer.is_member_of(&td) && signer.is_reserved());
        // A trust domain plus a valid path is a valid ID.
        let member = SpiffeId::new(&format!("spiffe://{s}/w")).expect("member ID");
        assert_eq!(member.trust_domain(), td);
        assert_eq!(TrustDomain::try_from(s.to_owned()).as_ref(), Ok(&td));
    } else {
        assert!(TrustDomain::try_from(s.to_owned()).is_err());
    }
});
