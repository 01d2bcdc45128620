//! Messages of the Flight session-option actions (`SetSessionOptions`,
//! `GetSessionOptions`, `CloseSession`), as defined in `Flight.proto`.
//!
//! arrow-flight 59 does not generate these messages, so they are declared
//! here with prost's derive, field for field as in the protocol file.

#![allow(missing_docs)]

use std::collections::HashMap;

/// A session option value.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SessionOptionValue {
    #[prost(oneof = "session_option_value::OptionValue", tags = "1, 2, 3, 4, 5")]
    pub option_value: Option<session_option_value::OptionValue>,
}

pub(crate) mod session_option_value {
    /// A list of strings.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct StringListValue {
        #[prost(string, repeated, tag = "1")]
        pub values: Vec<String>,
    }

    /// The value; variant names follow the protocol file.
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(clippy::enum_variant_names)]
    pub(crate) enum OptionValue {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(sfixed64, tag = "3")]
        Int64Value(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(message, tag = "5")]
        StringListValue(StringListValue),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsRequest {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub errors: HashMap<String, SetSessionOptionsError>,
}

/// Why one option was not set.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SetSessionOptionsError {
    /// 1 invalid name, 2 invalid value, 3 error.
    #[prost(int32, tag = "1")]
    pub value: i32,
}

pub(crate) const ERROR_INVALID_NAME: i32 = 1;
pub(crate) const ERROR_INVALID_VALUE: i32 = 2;

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GetSessionOptionsRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct GetSessionOptionsResult {
    #[prost(map = "string, message", tag = "1")]
    pub session_options: HashMap<String, SessionOptionValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CloseSessionRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CloseSessionResult {
    /// 1 closed.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

pub(crate) const CLOSE_STATUS_CLOSED: i32 = 1;

impl SessionOptionValue {
    pub(crate) fn string(s: impl Into<String>) -> Self {
        Self {
            option_value: Some(session_option_value::OptionValue::StringValue(s.into())),
        }
    }

    pub(crate) fn bool(b: bool) -> Self {
        Self {
            option_value: Some(session_option_value::OptionValue::BoolValue(b)),
        }
    }

    /// The value as SET would take it.
    pub(crate) fn as_setting(&self) -> Option<String> {
        use session_option_value::OptionValue as V;
        Some(match self.option_value.as_ref()? {
            V::StringValue(s) => s.clone(),
            V::BoolValue(b) => b.to_string(),
            V::Int64Value(i) => i.to_string(),
            V::DoubleValue(d) => d.to_string(),
            V::StringListValue(l) => l.values.join(","),
        })
    }
}
