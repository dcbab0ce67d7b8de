//! `EVENTONCE_DISABLED`, read by `ConfigBuilder::build`: every spelling of yes and no, an
//! unset or empty variable, and a value that is neither. One test in a process of its
//! own, since the environment is shared by the whole process.

use eventonce::{ConfigError, IdempotencyConfig, DISABLED_ENV};

fn built(disabled_in_code: bool) -> Result<bool, ConfigError> {
    IdempotencyConfig::builder("switch-env-test")
        .disabled(disabled_in_code)
        .build()
        .map(|c| c.disabled())
}

#[test]
fn eventonce_disabled_switches_the_guard_off_and_on_and_refuses_other_values() {
    std::env::remove_var(DISABLED_ENV);
    assert_eq!(built(false), Ok(false), "unset: the code decides");
    assert_eq!(built(true), Ok(true));
    for blank in ["", "  "] {
        std::env::set_var(DISABLED_ENV, blank);
        assert_eq!(built(false), Ok(false), "{blank:?}: the code decides");
        assert_eq!(built(true), Ok(true), "{blank:?}: the code decides");
    }
    for yes in [
        "1", "true", "TRUE", "True", "yes", "YES", "on", "On", " true ",
    ] {
        std::env::set_var(DISABLED_ENV, yes);
        assert_eq!(built(false), Ok(true), "{yes:?} switches it off");
    }
    for no in ["0", "false", "FALSE", "no", "No", "off", "OFF", " 0\n"] {
        std::env::set_var(DISABLED_ENV, no);
        assert_eq!(built(true), Ok(false), "{no:?} switches it on");
    }
    for bad in ["2", "disabled", "y", "enable", "truee"] {
        std::env::set_var(DISABLED_ENV, bad);
        let err = built(false).expect_err(bad);
        assert!(
            matches!(err, ConfigError::InvalidEnvironment { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        println!("{text}");
        assert!(
            text.contains("EVENTONCE_DISABLED") && text.contains(bad),
            "{text}"
        );
    }
    std::env::remove_var(DISABLED_ENV);
    assert_eq!(built(false), Ok(false));
}
