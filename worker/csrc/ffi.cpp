// The one way back for the messages that ffi.h's entry points hand to Rust.

#include <cstdlib>

extern "C" void camp_free_message(char* message) { std::free(message); }
