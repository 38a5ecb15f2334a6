//! Resource documents (`skein_model::parse_documents`: YAML or JSON, several documents,
//! every problem reported). Properties: a refusal says something; every accepted resource
//! written back as YAML and as JSON parses to the same resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_model::parse_documents;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_documents(text, "fuzz") {
        Err(e) => assert!(!e.to_string().trim().is_empty(), "an empty refusal"),
        Ok(resources) => {
            for r in resources {
                for written in [r.to_yaml(), r.to_json()] {
                    let back = parse_documents(&written, "written back")
                        .unwrap_or_else(|e| panic!("{written}\nrefused when read back: {e}"));
                    assert_eq!(back, vec![r.clone()], "{written}");
                }
            }
        }
    }
});
