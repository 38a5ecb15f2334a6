//! The proxy's configuration file (`ProxyConfig::from_yaml`: parse, then validate every
//! rule). Properties: a refusal names the source; an accepted configuration written back
//! as YAML parses and validates to the same configuration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_model::ProxyConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ProxyConfig::from_yaml(text, "fuzz.yaml") {
        Err(e) => assert!(e.to_string().contains("fuzz.yaml"), "{e}"),
        Ok(config) => {
            let written = config.to_yaml();
            let back = ProxyConfig::from_yaml(&written, "written back")
                .unwrap_or_else(|e| panic!("{written}\nrefused when read back: {e}"));
            assert_eq!(back, config, "{written}");
        }
    }
});
