// What every entry point of the worker's C++ shares: a failure comes back to
// Rust as a malloc'ed message (freed by camp_free_message), never as an
// exception across the boundary.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace camp {

inline char* copy_text(const std::string& text) {
  char* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy != nullptr) std::memcpy(copy, text.c_str(), text.size() + 1);
  return copy;
}

// Runs `body`; an exception becomes a message in *error and false.
template <typename F>
bool guarded(char** error, F&& body) {
  try {
    body();
    return true;
  } catch (const c10::Error& e) {
    *error = copy_text(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *error = copy_text(e.what());
  }
  return false;
}

}  // namespace camp
