#pragma once
/// \file error.hpp
/// The library's exception hierarchy. Every error carries a stable id and a message that starts with
/// `[peft.<id>]`, so callers can catch by type and users can grep logs by prefix:
///
///     try { peft::load_adapter(model, "out/adapter"); }
///     catch (const peft::AdapterError& e) { std::cerr << e.what() << "\n"; }  // [peft.adapter] ...

#include <stdexcept>
#include <string>

namespace peft {

/// Base of every exception the library throws. `id()` is one of: format, io, config, adapter, match,
/// state, input, checkpoint.
class Error : public std::runtime_error {
 public:
  Error(const std::string& id, const std::string& message)
      : std::runtime_error("[peft." + id + "] " + message), id_(id), message_(message) {}
  /// The stable category, e.g. "format".
  const std::string& id() const noexcept { return id_; }
  /// The message without the `[peft.id] ` prefix.
  const std::string& message() const noexcept { return message_; }

 private:
  std::string id_;
  std::string message_;
};

/// A safetensors file violates the format (header, dtype, shape, offsets, metadata).
class FormatError : public Error {
 public:
  explicit FormatError(const std::string& m) : Error("format", m) {}
};

/// A file could not be opened, read, written, synced or renamed.
class IoError : public Error {
 public:
  explicit IoError(const std::string& m) : Error("io", m) {}
};

/// An adapter_config.json (or a config built in code) is malformed or asks for something unsupported.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& m) : Error("config", m) {}
};

/// Adapter weights do not fit the config or the model: missing or extra tensors, wrong shapes, ranks.
class AdapterError : public Error {
 public:
  explicit AdapterError(const std::string& m) : Error("adapter", m) {}
};

/// target_modules / modules_to_save matched nothing, or named a module of the wrong kind.
class MatchError : public Error {
 public:
  explicit MatchError(const std::string& m) : Error("match", m) {}
};

/// An operation is not valid in the current state (unknown adapter name, merge producing NaN/Inf...).
class StateError : public Error {
 public:
  explicit StateError(const std::string& m) : Error("state", m) {}
};

/// A tensor given to a model's forward has the wrong shape, dtype or values (image size, channel
/// count, token ids out of the vocabulary, a mask of the wrong length).
class InputError : public Error {
 public:
  explicit InputError(const std::string& m) : Error("input", m) {}
};

/// A model checkpoint does not fit the model: missing, unexpected or mis-shaped tensors.
class CheckpointError : public Error {
 public:
  explicit CheckpointError(const std::string& m) : Error("checkpoint", m) {}
};

}  // namespace peft
