// The engine's tuning variables (BLLAMA_SPIN_US, BLLAMA_PIN, BLLAMA_HUGE_PAGES). A value that is not one of the
// accepted spellings is said once on stderr and ignored (the default holds): "BLLAMA_PIN=yes" meant off,
// "BLLAMA_HUGE_PAGES=no" on and "BLLAMA_SPIN_US=abc" 0 us, each without a word.
#pragma once

#include <optional>

namespace bllama {

std::optional<bool> parse_switch(const char* text);          // 1/0, on/off, true/false, yes/no (any case)
std::optional<long> parse_count(const char* text, long max);  // a whole number in [0, max], nothing else

std::optional<bool> env_switch(const char* name);           // unset or not a switch: nullopt
std::optional<long> env_count(const char* name, long max);  // unset or not a count in range: nullopt

}  // namespace bllama
