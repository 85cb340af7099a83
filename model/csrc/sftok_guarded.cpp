// The one deallocator of the messages that sftok's shims return (sftok_guarded.h).
#include <cstdlib>

extern "C" void sftok_free_message(char* message) { std::free(message); }
